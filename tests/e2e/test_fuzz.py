"""Arbitrary Python values in a tracked cell: the cell never fails because of nbtrack, and what is
logged is valid MLflow (the store accepted the whole run)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


class BrokenRepr:
    def __repr__(self):
        raise RuntimeError("repr is broken")

    __str__ = __repr__


class BrokenEverything:
    def __getattr__(self, name):
        raise RuntimeError(f"no {name}")

    def __repr__(self):
        raise RuntimeError("repr is broken")


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=50),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x1F), max_size=10),
    st.text(min_size=7000, max_size=9000, alphabet="ab\n"), st.binary(max_size=30),
    st.sampled_from([np.float32(1.5), np.int64(7), np.bool_(True), np.float64("nan"),
                     np.float64("inf"), np.str_("numpy text"), np.array(3.0)]),
    st.builds(BrokenRepr), st.builds(BrokenEverything),
    st.builds(lambda n: np.arange(n), st.integers(0, 5)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
keys = st.text(min_size=0, max_size=300)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=values, other=values, key=keys, metric=st.one_of(scalars, st.floats()))
def test_arbitrary_values_never_break_the_cell_and_the_run_is_valid_mlflow(
        shell, capsys, value, other, key, metric):
    import nbtrack

    shell.ip.user_ns.update({"fuzzed": value, "other_value": other, "metric_value": metric,
                             "nbtrack": nbtrack})
    before = len(nbtrack.unrecorded())
    capsys.readouterr()
    result = shell.run(
        "%%track -e fuzz\n"
        "copy = fuzzed\n"
        "pair = (other_value, fuzzed)\n"
        f"nbtrack.log_param({key!r}, other_value)\n"
        f"nbtrack.log_metric({key!r}, metric_value)\n"
        "nbtrack.log_param('fuzzed_param', fuzzed)\n"
        "done = True\n"
    )
    assert result.success, result.error_in_exec
    warnings = capsys.readouterr().err
    assert len(nbtrack.unrecorded()) == before, warnings  # the store accepted the run
    assert "not recorded" not in warnings, warnings  # ... and every part of it
    run = shell.last()
    assert run.info.status == "FINISHED"
    assert run.data.params["done"] == "True"
    for number in run.data.metrics.values():
        assert math.isfinite(number)
