"""Run summaries: one run as the run index keeps it (info, latest metric values, params, tags and
dataset digests), shaped like MLflow's run entities so MLflow's own filter code can read it, and
ranked or tabled the way ``mlflow.search_runs`` would give it.
"""

from __future__ import annotations

import json
import math

from nbtrack.record import SYSTEM_PREFIX

INFO_FIELDS = ("run_id", "run_name", "experiment_id", "user_id", "status", "start_time",
               "end_time", "artifact_uri", "lifecycle_stage")
RUNNING = "RUNNING"
DELETED = "deleted"
DATASET_CONTEXT_TAG = "mlflow.data.context"  # mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT


class _Info:
    __slots__ = INFO_FIELDS

    def __init__(self, values: dict):
        for name in INFO_FIELDS:
            setattr(self, name, values.get(name))


class _Data:
    __slots__ = ("metrics", "params", "tags")

    def __init__(self, metrics: dict, params: dict, tags: dict):
        self.metrics, self.params, self.tags = metrics, params, tags


class _Tag:
    __slots__ = ("key", "value")

    def __init__(self, key, value):
        self.key, self.value = key, value


class _Dataset:
    __slots__ = ("name", "digest")

    def __init__(self, name, digest):
        self.name, self.digest = name, digest


class _DatasetInput:
    __slots__ = ("dataset", "tags")

    def __init__(self, name, digest, context):
        self.dataset = _Dataset(name, digest)
        self.tags = [_Tag(DATASET_CONTEXT_TAG, context)] if context is not None else []


class _Inputs:
    __slots__ = ("dataset_inputs",)

    def __init__(self, datasets: list):
        self.dataset_inputs = [_DatasetInput(*d) for d in datasets]


class RunSummary:
    """One run as the index holds it: ``info``, ``data`` (metrics, params, tags) and ``inputs``,
    shaped like ``mlflow.entities.Run`` as far as MLflow's filter and the board read it.
    """

    __slots__ = ("info", "data", "inputs", "_datasets")

    def __init__(self, record: dict):
        self._datasets = record.get("datasets", [])
        self.info = _Info(record["info"])
        self.data = _Data(record["metrics"], record["params"], record["tags"])
        self.inputs = _Inputs(self._datasets)

    @classmethod
    def from_run(cls, run) -> RunSummary:
        """The summary of an ``mlflow.entities.Run``."""
        datasets = []
        for item in (run.inputs.dataset_inputs if run.inputs else []):
            context = next((t.value for t in item.tags if t.key == DATASET_CONTEXT_TAG), None)
            datasets.append([item.dataset.name, item.dataset.digest, context])
        return cls({
            "info": {name: getattr(run.info, name) for name in INFO_FIELDS},
            "metrics": dict(run.data.metrics),
            "params": dict(run.data.params),
            "tags": dict(run.data.tags),
            "datasets": datasets,
        })

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.info.run_id

    @property
    def deleted(self) -> bool:
        """True for a run in MLflow's trash (``search_runs`` leaves it out)."""
        return self.info.lifecycle_stage == DELETED

    def record(self) -> dict:
        """The summary as plain values (what the index file stores, as JSON)."""
        return {"info": {name: getattr(self.info, name) for name in INFO_FIELDS},
                "metrics": self.data.metrics, "params": self.data.params,
                "tags": self.data.tags, "datasets": self._datasets}

    def to_json(self) -> str:
        """The summary as stored in the index file."""
        return json.dumps(self.record(), separators=(",", ":"))

    def same_as(self, other: RunSummary) -> bool:
        """True when both summaries hold the same values."""
        return json.dumps(self.record(), sort_keys=True) == json.dumps(other.record(),
                                                                     sort_keys=True)


def natural_order(summary: RunSummary):
    """The order of ``search_runs`` without ``order_by``: newest start first, then run id."""
    return (-(summary.info.start_time or 0), summary.info.run_id)


def is_missing(value) -> bool:
    """A metric value that ``search_runs``'s DataFrame shows as NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


# -- the index -----------------------------------------------------------------------------------


def default_metric(runs: list[RunSummary]) -> str | None:
    """The metric most runs have (ties: by name), as :func:`nbtrack.store.query.rank` picks it."""
    counts: dict[str, int] = {}
    for run in runs:
        for key, value in run.data.metrics.items():
            if key.startswith(SYSTEM_PREFIX):
                continue
            counts.setdefault(key, 0)
            if not is_missing(value):
                counts[key] += 1
    if not counts:
        return None
    return sorted(counts, key=lambda key: (-counts[key], f"metrics.{key}"))[0]


def rank_by(runs: list[RunSummary], metric: str | None, ascending: bool) -> list[RunSummary]:
    """``runs`` (in natural order) ranked as pandas' stable ``sort_values`` ranks the
    ``search_runs`` DataFrame: by the metric, missing values last, ties in natural order.
    """
    if not metric:
        return list(runs)
    present = [r for r in runs if not is_missing(r.data.metrics.get(metric))]
    missing = [r for r in runs if is_missing(r.data.metrics.get(metric))]
    present.sort(key=lambda r: r.data.metrics[metric], reverse=not ascending)
    return present + missing


def metric_keys(runs: list[RunSummary]) -> list[str]:
    """Every metric key the runs have, in the order ``search_runs``'s DataFrame has them; system
    metrics (``system/...``: the machine's, not the model's) are left to the MLflow UI.
    """
    keys: dict[str, None] = {}
    for run in runs:
        for key in run.data.metrics:
            if not key.startswith(SYSTEM_PREFIX):
                keys.setdefault(key, None)
    return list(keys)


def to_frame(runs: list[RunSummary], metrics: list[str] | None = None):
    """``runs`` as ``mlflow.search_runs`` returns them in a DataFrame (same columns, types and
    missing values); ``metrics`` adds metric columns that none of these runs has.
    """
    import numpy as np
    import pandas as pd

    info = {name: [] for name in ("run_id", "experiment_id", "status", "artifact_uri",
                                  "start_time", "end_time")}
    metric_names = list(dict.fromkeys([*(metrics or []), *metric_keys(runs)]))
    param_names = list(dict.fromkeys(k for r in runs for k in r.data.params))
    tag_names = list(dict.fromkeys(k for r in runs for k in r.data.tags))
    for run in runs:
        for name in info:
            info[name].append(getattr(run.info, name))
    for name in ("start_time", "end_time"):
        # One conversion for the column; search_runs converts each value, to the same result.
        info[name] = list(pd.to_datetime(pd.Series(info[name], dtype="float64"), unit="ms",
                                         utc=True))
    data = dict(info)
    for key in metric_names:
        data[f"metrics.{key}"] = [r.data.metrics.get(key, np.nan) for r in runs]
    for key in param_names:
        data[f"params.{key}"] = [r.data.params.get(key) for r in runs]
    for key in tag_names:
        data[f"tags.{key}"] = [r.data.tags.get(key) for r in runs]
    return pd.DataFrame(data)
