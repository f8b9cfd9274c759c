"""MLflow's limits as nbtrack applies them (nbtrack/capture/sanitize.py)."""

import math

from mlflow.utils import validation

from nbtrack.capture import sanitize
from nbtrack.store import recorder


def test_limits_match_mlflows_own():
    assert sanitize.MAX_KEY_LENGTH == validation.MAX_ENTITY_KEY_LENGTH
    assert sanitize.MAX_PARAM_VALUE_LENGTH == validation.MAX_PARAM_VAL_LENGTH
    assert sanitize.MAX_TAG_VALUE_LENGTH == validation.MAX_TAG_VAL_LENGTH
    assert recorder.PARAMS_TAGS_PER_BATCH == validation.MAX_PARAMS_TAGS_PER_BATCH
    assert recorder.METRICS_PER_BATCH == validation.MAX_METRICS_PER_BATCH


def test_keys_are_fixed_or_skipped_and_each_change_named():
    said = []
    assert sanitize.key("a b/c-d.e_f", "param", said.append) == "a b/c-d.e_f"
    assert sanitize.key("weird!key?", "param", said.append) == "weird_key_"
    assert sanitize.key("../up", "metric", said.append) is None
    assert sanitize.key("x" * 300, "tag", said.append) == "x" * 250
    assert any("'weird!key?'" in s for s in said)
    for name in ("..", "/", ""):
        fixed = sanitize.key(name, "param", said.append)
        assert fixed is None or validation.validate_param_and_metric_name(fixed)


def test_values_truncated_metrics_nan_skipped():
    said = []
    params = sanitize.params({"p": "v" * 7000, "q": "ok\x00"}, said.append)
    assert len(params["p"]) == 6000 and params["p"].endswith(sanitize.TRUNCATION_MARK)
    assert params["q"] == "ok\ufffd"
    metrics = sanitize.metrics({"a": 1.0, "b": math.nan, "c": -math.inf}, said.append)
    assert metrics == {"a": 1.0}
    assert sum("not logged" in s for s in said) == 2
