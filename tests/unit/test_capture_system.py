"""System metrics sampled on a thread: MLflow's names, one sample at least, NVIDIA's GPUs when any."""

from __future__ import annotations

import threading
import time

import pytest

from nbtrack.capture.system import SystemSampler, _nvidia_gpus


def test_samples_every_interval_under_mlflows_names_and_the_thread_ends():
    sampler = SystemSampler(interval=0.2)
    sampler.start()
    time.sleep(1.1)
    series = sampler.stop()
    assert sampler.problem is None
    cpu = series["system/cpu_utilization_percentage"]
    assert len(cpu) >= 3 and list(cpu.steps) == list(range(len(cpu)))
    assert all(0 <= v <= 100 * 64 for v in cpu.values)
    memory = series["system/system_memory_usage_percentage"]
    assert all(0 < v <= 100 for v in memory.values)
    assert min(series["system/process_memory_rss_megabytes"].values) > 10
    assert not [t for t in threading.enumerate() if t.name == "nbtrack-system-metrics"]


def test_a_cell_shorter_than_the_interval_gets_one_sample():
    sampler = SystemSampler(interval=30)
    sampler.start()
    series = sampler.stop()
    assert {len(s) for s in series.values()} == {1}


def test_without_an_nvidia_gpu_there_are_no_gpu_series_and_no_error():
    """nvidia-ml-py is installed by the test extra: here it finds no driver or no GPU."""
    gpus, _ = _nvidia_gpus()
    if gpus:
        pytest.skip("this machine has an NVIDIA GPU: see the next test")
    sampler = SystemSampler(interval=30)
    sampler.start()
    series = sampler.stop()
    assert sampler.problem is None and not [k for k in series if "gpu" in k]


def test_nvidia_gpus_are_sampled_when_there_are_any():
    gpus, _ = _nvidia_gpus()
    if not gpus:
        pytest.skip("no NVIDIA GPU or driver on this machine: GPU sampling cannot be tried here")
    sampler = SystemSampler(interval=30)
    sampler.start()
    series = sampler.stop()
    for key in ("utilization_percentage", "memory_usage_megabytes", "memory_usage_percentage"):
        assert len(series[f"system/gpu_0_{key}"]) == 1
