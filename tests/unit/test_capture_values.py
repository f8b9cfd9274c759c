"""Which values are params and metrics: numbers of every array library, without importing one."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from nbtrack.capture.values import flatten_param, metric_number


@pytest.mark.parametrize("value, number", [
    (torch.tensor(0.25), 0.25),
    (torch.tensor([1.0, 2.0]).mean(), 1.5),
    (torch.tensor(3, dtype=torch.int64), 3.0),
    (torch.tensor(0.5, requires_grad=True) * 2, 1.0),
    (np.float32(2.0), 2.0),
    (np.array(4.0), 4.0),
    (7, 7.0),
])
def test_zero_dimensional_numbers_of_any_array_library_are_metrics(value, number):
    assert metric_number(value) == pytest.approx(number)


@pytest.mark.parametrize("value", [
    torch.tensor([1.0]),  # one element, but an array, not a scalar
    torch.zeros(3),
    np.zeros(2),
    torch.tensor(True),
    True,
    "0.5",
])
def test_arrays_bools_and_text_are_not_metrics(value):
    assert metric_number(value) is None


def test_a_zero_dimensional_tensor_param_is_its_number():
    assert flatten_param("lr", torch.tensor(0.01), 20) == {"lr": pytest.approx(0.01)}


def test_reading_values_imports_no_array_library():
    code = ("import sys\nfrom nbtrack.capture.values import metric_number\n"
            "metric_number(1.5); metric_number('x')\n"
            "print(sorted(m for m in ('torch', 'jax', 'tensorflow', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
