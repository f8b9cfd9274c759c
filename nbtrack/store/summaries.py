"""Run summaries: one run as the run index keeps it (info, latest metric values, params, tags and
dataset digests), shaped like MLflow's run entities so MLflow's own filter code can read it, and
ranked or tabled the way ``mlflow.search_runs`` would give it.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from collections.abc import Iterable
from itertools import chain, islice
from operator import attrgetter

from nbtrack.record import SYSTEM_PREFIX

INFO_FIELDS = ("run_id", "run_name", "experiment_id", "user_id", "status", "start_time",
               "end_time", "artifact_uri", "lifecycle_stage")
RUNNING = "RUNNING"
DELETED = "deleted"
DATASET_CONTEXT_TAG = "mlflow.data.context"  # mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT


class _Info:
    # The record's own dict as the attributes: no copy, which at 100,000 runs is most of the
    # time a new process takes to load the index file.
    def __init__(self, values: dict):
        self.__dict__ = values

    def __getattr__(self, name):  # a field an older record lacks
        if name in INFO_FIELDS:
            return None
        raise AttributeError(name)


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

    What ranking reads (``run_id``, ``start_time``, ``status``, ``deleted``, ``metrics``) is held
    as plain attributes; the rest of a summary loaded from the index file stays there until
    something asks for it (a filter, a row of the shown page): it is then read from ``source``
    (:meth:`nbtrack.store.index_file.IndexFile.texts`), for many runs at once by
    :func:`prefetch`. At 100,000 runs that is most of what a new process's first page would
    spend.
    """

    __slots__ = ("run_id", "start_time", "status", "deleted", "metrics", "_text", "_record",
                 "_info", "_data", "_inputs", "_source")

    def __init__(self, record: dict | None = None, light: tuple | None = None,
                 text: str | None = None, source=None):
        self._info = self._data = self._inputs = None
        if record is not None:
            self._take(record)
            self._text = self._source = None
        else:  # from the file: its light columns, and the whole record's text (or its source)
            self.run_id, self.start_time, self.status, self.deleted, self.metrics = light
            self._record, self._text, self._source = None, text, source

    def _take(self, record: dict) -> None:
        self._record = record
        info = record["info"]
        self.run_id, self.start_time, self.status = (info["run_id"], info.get("start_time"),
                                                     info.get("status"))
        self.deleted = info.get("lifecycle_stage") == DELETED
        self.metrics = record["metrics"]

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

    def record(self) -> dict:
        """The summary as plain values (what the index file stores, as JSON)."""
        if self._record is None:
            if self._text is None:
                prefetch([self])
                if self._text is None:
                    raise ValueError(f"run {self.run_id} is no longer in the index file")
            self._take(json.loads(self._text))
        return self._record

    @property
    def info(self) -> _Info:
        """``run.info``'s fields."""
        if self._info is None:
            self._info = _Info(self.record()["info"])
        return self._info

    @property
    def data(self) -> _Data:
        """``run.data``: latest metric values, params, tags."""
        if self._data is None:
            record = self.record()
            self._data = _Data(self.metrics, record["params"], record["tags"])
        return self._data

    @property
    def inputs(self) -> _Inputs:
        """``run.inputs``: the dataset inputs (name, digest, context)."""
        if self._inputs is None:
            datasets = self.record().get("datasets")
            self._inputs = _Inputs(datasets) if datasets else _NO_INPUTS
        return self._inputs

    def light(self) -> tuple:
        """What ranking reads: ``(run_id, start_time, status, deleted, metrics)``."""
        return self.run_id, self.start_time, self.status, self.deleted, self.metrics

    def to_json(self) -> str:
        """The summary as stored in the index file."""
        if self._text is None:
            self._text = json.dumps(self.record(), separators=(",", ":"))
        return self._text

    def has_text(self) -> bool:
        """True when the whole summary is here, not only in the index file."""
        return self._record is not None or self._text is not None

    def same_as(self, other: RunSummary) -> bool:
        """True when both summaries hold the same values; False when this one's text in the
        index file no longer decodes or is gone (it is then replaced by what was read).
        """
        try:
            return self.to_json() == other.to_json() or json.dumps(
                self.record(), sort_keys=True) == json.dumps(other.record(), sort_keys=True)
        except ValueError:
            return False


_NO_INPUTS = _Inputs([])


def prefetch(runs: Iterable[RunSummary]) -> None:
    """Read from the index file, in one query a file, the rest of the summaries of ``runs`` that
    were loaded without it; a run the file no longer holds is left without (its ``record()``
    raises ValueError).
    """
    wanted: dict = {}
    for run in runs:
        if run._record is None and run._text is None and run._source is not None:
            wanted.setdefault(run._source, []).append(run)
    for source, waiting in wanted.items():
        texts = source.texts([run.run_id for run in waiting])
        for run in waiting:
            run._text = texts.get(run.run_id)


def natural_order(summary: RunSummary):
    """The order of ``search_runs`` without ``order_by``: newest start first, then run id."""
    return (-(summary.start_time or 0), summary.run_id)


def in_natural_order(items: list, start_time=attrgetter("start_time"),
                     run_id=attrgetter("run_id")) -> list:
    """``items`` (summaries, or anything with the getters given) sorted in natural order: two
    stable sorts, faster than one on :func:`natural_order`'s tuples.
    """
    ordered = sorted(items, key=run_id)
    ordered.sort(key=lambda item: start_time(item) or 0, reverse=True)
    return ordered


def is_missing(value) -> bool:
    """A metric value that ``search_runs``'s DataFrame shows as NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


# -- the index -----------------------------------------------------------------------------------


def metric_counts(runs: list[RunSummary]) -> dict[str, int]:
    """How many runs have a value of each metric key, keys in the order ``search_runs``'s
    DataFrame has them; system metrics (``system/...``: the machine's, not the model's) are left
    to the MLflow UI.
    """
    every = list(map(attrgetter("metrics"), runs))
    # Counted in C; a value the DataFrame shows as missing (None, NaN) is rare: then one by one.
    values = list(chain.from_iterable(map(dict.values, every)))
    try:
        rare = None in values or any(map(math.isnan, values))
    except TypeError:  # not a number: MLflow's metrics are, a broken file's may not be
        rare = True
    if rare:
        counts: dict[str, int] = {}
        get = counts.get
        for metrics in every:
            for key, value in metrics.items():
                counts[key] = get(key, 0) + (value is not None and value == value)
    else:
        counts = Counter(chain.from_iterable(every))
    return {key: n for key, n in counts.items() if not key.startswith(SYSTEM_PREFIX)}


def default_metric(runs: list[RunSummary], counts: dict[str, int] | None = None) -> str | None:
    """The metric most runs have (ties: by name), as :func:`nbtrack.store.query.rank` picks it."""
    counts = metric_counts(runs) if counts is None else counts
    if not counts:
        return None
    return sorted(counts, key=lambda key: (-counts[key], f"metrics.{key}"))[0]


def rank_by(runs: list[RunSummary], metric: str | None, ascending: bool,
            top: int | None = None) -> list[RunSummary]:
    """``runs`` (in natural order) ranked as pandas' stable ``sort_values`` ranks the
    ``search_runs`` DataFrame: by the metric, missing values last, ties in natural order; only
    the first ``top`` when given (the same ones, found without sorting every run).
    """
    if not metric:
        return list(runs[:top] if top is not None else runs)
    values = [metrics.get(metric) for metrics in map(attrgetter("metrics"), runs)]
    present = [i for i, value in enumerate(values) if value is not None and value == value]
    key = values.__getitem__
    if top is None:
        present.sort(key=key, reverse=not ascending)
        best = present
    else:  # documented as sorted(...)[:top], ties included: the same runs in the same order
        best = (heapq.nsmallest if ascending else heapq.nlargest)(top, present, key)
    ranked = [runs[i] for i in best]
    if top is None or len(ranked) < top:
        shown = set(present)
        missing = (run for i, run in enumerate(runs) if i not in shown)
        ranked += missing if top is None else islice(missing, top - len(ranked))
    return ranked


def metric_keys(runs: list[RunSummary]) -> list[str]:
    """Every metric key the runs have, in the order ``search_runs``'s DataFrame has them, system
    metrics left out (see :func:`metric_counts`).
    """
    return list(metric_counts(runs))


def to_frame(runs: list[RunSummary], metrics: list[str] | None = None):
    """``runs`` as ``mlflow.search_runs`` returns them in a DataFrame (same columns, types and
    missing values); ``metrics`` adds metric columns that none of these runs has.
    """
    import numpy as np
    import pandas as pd

    prefetch(runs)
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
