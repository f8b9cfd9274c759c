"""Learning curves from the frameworks' own records, as ``{key: [(step, value), ...]}``.

Boosters' evaluation dicts (``evals_result``, ``record_evaluation``, ``evals_result_``,
``get_evals_result()``), Keras ``History``, a Hugging Face Trainer's ``state.log_history``, and
what a LightningModule logs with ``self.log`` (recorded by :class:`LightningTap` while the tracked
cell runs, removed after it). Keys follow the framework's names: ``val-auc``, ``val_loss``,
``eval_loss``. Nothing here imports a framework.
"""

from __future__ import annotations

import math
import numbers
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from nbtrack.capture import frameworks
from nbtrack.capture.pruning import TrialPruned
from nbtrack.record import Series

Curves = dict[str, list[tuple[int, float]]]
MAX_POINTS = 100_000  # a curve longer than this is a record of something else


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        if getattr(value, "ndim", None) == 0 or getattr(value, "shape", None) == ():
            return float(value)
    except Exception:  # not a scalar after all
        return None
    return None


def _numbers(values: Any) -> list[float] | None:
    if not isinstance(values, (list, tuple)) or not values or len(values) > MAX_POINTS:
        return None
    numbers_ = [_number(v) for v in values]
    return None if any(n is None for n in numbers_) else numbers_


def evaluation_record(value: Any) -> Curves:
    """The curves of a booster's evaluation dict ``{data set: {metric: [per round]}}``, keyed
    ``<data set>-<metric>`` as XGBoost prints them; {} when ``value`` is not one.
    """
    if not isinstance(value, Mapping) or not value:
        return {}
    curves: Curves = {}
    for data_set, metrics in value.items():
        if not isinstance(data_set, str) or not isinstance(metrics, Mapping) or not metrics:
            return {}
        for metric, values in metrics.items():
            points = _numbers(values)
            if not isinstance(metric, str) or points is None:
                return {}
            curves[f"{data_set}-{metric}"] = list(enumerate(points))
    return curves


def _keras_history(history: Any) -> Curves:
    epochs = list(getattr(history, "epoch", None) or [])
    curves: Curves = {}
    for key, values in (getattr(history, "history", None) or {}).items():
        points = _numbers(values)
        if isinstance(key, str) and points:
            steps = epochs if len(epochs) == len(points) else range(len(points))
            curves[key] = [(int(step), value) for step, value in zip(steps, points, strict=False)]
    return curves


def _hf_log_history(trainer: Any) -> Curves:
    curves: Curves = {}
    for entry in getattr(getattr(trainer, "state", None), "log_history", None) or []:
        step = entry.get("step")
        if not isinstance(step, int):
            continue
        for key, value in entry.items():
            number = _number(value)
            if key in ("step", "epoch") or number is None or not math.isfinite(number):
                continue
            curves.setdefault(key, []).append((step, number))
    return curves


def curves_of(value: Any) -> Curves:
    """The curves ``value`` holds: an evaluation dict, a fitted XGBoost/LightGBM/CatBoost
    estimator, a Keras History or model, a Hugging Face Trainer; {} for anything else.
    """
    try:
        if isinstance(value, Mapping):
            return evaluation_record(value)
        lineage = frameworks._lineage(type(value)) if not isinstance(value, type) else frozenset()
        if frameworks.XGB_SKLEARN in lineage and value.__sklearn_is_fitted__():
            return evaluation_record(value.evals_result()) if _has_evals(value) else {}
        if frameworks.LGB_SKLEARN in lineage:
            return evaluation_record(getattr(value, "evals_result_", None) or {})
        if frameworks.CATBOOST in lineage and value.is_fitted():
            return evaluation_record(value.get_evals_result())
        if frameworks.KERAS_HISTORY in lineage:
            return _keras_history(value)
        if frameworks.KERAS_MODEL in lineage:
            return _keras_history(getattr(value, "history", None))
        if frameworks.HF_TRAINER in lineage:
            return _hf_log_history(value)
    except Exception:  # a framework whose records changed shape: no curve, never an error
        return {}
    return {}


def _has_evals(model: Any) -> bool:
    return bool(getattr(model, "evals_result_", None))


def collect(names: Iterable[str], namespace: Mapping[str, Any]) -> Curves:
    """The curves held by the values of ``names``; a key seen twice keeps its first curve."""
    curves: Curves = {}
    seen: set[int] = set()
    for name in names:
        value = namespace.get(name)
        if value is None or id(value) in seen:
            continue
        seen.add(id(value))
        for key, points in curves_of(value).items():
            curves.setdefault(key, points)
    return curves


# -- Lightning's self.log ----------------------------------------------------------------------

_CONNECTORS = ("lightning.pytorch.trainer.connectors.logger_connector.logger_connector",
               "pytorch_lightning.trainer.connectors.logger_connector.logger_connector")


class LightningTap:
    """What the Lightning Trainer records of ``self.log`` while a tracked cell runs.

    :meth:`install` wraps the Trainer's ``log_metrics`` (where every logged value passes, with its
    step, whether or not the Trainer has loggers) in the Lightning modules already imported;
    :meth:`remove` puts it back. The wrapper records and then calls the original unchanged.
    """

    def __init__(self, on_points=None) -> None:
        self.curves: Curves = {}
        self._patched: list[tuple[type, Any]] = []
        self._lock = threading.Lock()
        self.on_points = on_points  # called after each recording (the live panel's redraw)

    def install(self) -> None:
        """Start recording (in the Lightning modules imported so far)."""
        for name in _CONNECTORS:
            module = sys.modules.get(name)
            connector = getattr(module, "_LoggerConnector", None)
            original = getattr(connector, "log_metrics", None)
            if original is None or getattr(original, "_nbtrack_tap", False):
                continue
            connector.log_metrics = self._wrap(original)
            self._patched.append((connector, original))

    def points(self, key: str) -> list[tuple[int, float]]:
        """The ``(step, value)`` points of one key recorded so far."""
        with self._lock:
            return list(self.curves.get(key, ()))

    def remove(self) -> None:
        """Stop recording: Lightning is as it was."""
        while self._patched:
            connector, original = self._patched.pop()
            connector.log_metrics = original

    def _wrap(self, original):
        tap = self

        def log_metrics(connector, metrics, step=None):
            try:
                tap._record(connector, metrics, step)
                if tap.on_points is not None:
                    tap.on_points()
            except TrialPruned:  # a search stops this trial: the training stops here
                raise
            except Exception:  # a Lightning whose internals changed: the training goes on
                pass
            return original(connector, metrics, step)

        log_metrics._nbtrack_tap = True
        return log_metrics

    def _record(self, connector: Any, metrics: Mapping[str, Any], step: int | None) -> None:
        values = {key: _number(value) for key, value in (metrics or {}).items()}
        if step is None:
            if values.get("step") is not None:
                step = int(values["step"])
            else:
                loop = connector.trainer.fit_loop.epoch_loop
                step = int(loop._batches_that_stepped)
        with self._lock:
            for key, number in values.items():
                if key != "step" and number is not None:
                    self.curves.setdefault(key, []).append((int(step), number))


# Where the frameworks report a point while they train, for the live panel: (module, class,
# method). Keras calls History.on_epoch_end after every epoch (History is in every fit's
# callbacks); the Hugging Face Trainer passes every log (loss, eval_loss, learning_rate) through
# CallbackHandler.on_log.
_LIVE_HOOKS = (("keras.src.callbacks.history", "History", "on_epoch_end"),
               ("keras.callbacks", "History", "on_epoch_end"),
               ("tf_keras.callbacks", "History", "on_epoch_end"),
               ("transformers.trainer_callback", "CallbackHandler", "on_log"))


class LiveTap:
    """Points Keras and the Hugging Face Trainer report while they train, for the live panel only
    (the run's curves come from their own records, :func:`collect`, when the cell ends).

    :meth:`install` wraps the reporting methods of the classes already imported (the frameworks
    are imported by an earlier cell, or the tap finds nothing); the wrapper calls the original
    unchanged, then records the points and calls ``on_points()``, on the thread that trains.
    :meth:`remove` puts them back.
    """

    def __init__(self, on_points) -> None:
        self.series: dict[str, Series] = {}
        self._on_points = on_points
        self._patched: list[tuple[type, str, Any]] = []

    def install(self) -> None:
        """Start listening (in the framework classes imported so far)."""
        for module_name, class_name, method in _LIVE_HOOKS:
            owner = getattr(sys.modules.get(module_name), class_name, None)
            original = owner.__dict__.get(method) if isinstance(owner, type) else None
            if original is None or getattr(original, "_nbtrack_tap", False):
                continue
            setattr(owner, method, self._wrap(original, method))
            self._patched.append((owner, method, original))

    def remove(self) -> None:
        """Stop listening: the frameworks are as they were."""
        while self._patched:
            owner, method, original = self._patched.pop()
            setattr(owner, method, original)

    def _wrap(self, original, method: str):
        tap = self

        if method == "on_epoch_end":  # Keras: History.on_epoch_end(self, epoch, logs=None)
            def reported(history, epoch, logs=None, *args, **kwargs):
                result = original(history, epoch, logs, *args, **kwargs)
                tap._heard(logs, epoch)
                return result
        else:  # Hugging Face: CallbackHandler.on_log(self, args, state, control, logs)
            def reported(handler, args, state, control, logs=None, *rest, **kwargs):
                result = original(handler, args, state, control, logs, *rest, **kwargs)
                tap._heard(logs, getattr(state, "global_step", None))
                return result

        reported._nbtrack_tap = True
        return reported

    def _heard(self, logs, step) -> None:
        try:
            now = int(time.time() * 1000)
            for key, value in (logs or {}).items():
                number = _number(value)
                if number is None or not math.isfinite(number):
                    continue
                series = self.series.get(key)
                if series is None:
                    series = self.series[key] = Series(str(key))
                series.add(number, len(series) if step is None else int(step), now)
            self._on_points()
        except TrialPruned:  # a search stops this trial: the training stops here
            raise
        except Exception:  # noqa: S110 - a picture of the training; the training goes on
            pass


def lightning_series(tap: LightningTap | None) -> dict[str, Series]:
    """What a :class:`LightningTap` recorded so far, as series for the live panel."""
    if tap is None:
        return {}
    with tap._lock:
        recorded = {key: list(points) for key, points in tap.curves.items()}
    found = {}
    for key, points in recorded.items():
        series = found[key] = Series(key)
        for step, value in points:
            series.add(value, step, 0)
    return found
