"""What a tracked cell trained: its models (with the MLflow flavor of their framework and an
input example), the objects whose settings are params, and the frameworks' learning curves.

Plain functions over the cell's namespace and syntax; nothing here imports a framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nbtrack.capture import curves, estimators, frameworks
from nbtrack.capture.source import is_shell_name
from nbtrack.record import ModelCapture, Series


def estimator_names(active) -> list[str]:
    """Names the cell binds or fits, in order: where its models may be."""
    names = [*active.syntax.bound_names, *active.syntax.fitted]
    return [n for n in dict.fromkeys(names) if not is_shell_name(n)]


def setting_names(active) -> list[str]:
    """Names whose objects' settings are params: those the cell binds or fits, and optimizers,
    trainers and models it reads from earlier cells.
    """
    names = [*estimator_names(active), *active.syntax.read_names]
    return [n for n in dict.fromkeys(names) if not is_shell_name(n)]


def cell_models(active, namespace: Mapping[str, Any], warn) -> list[ModelCapture]:
    """Trained models the cell binds or trains, each with the MLflow flavor that saves it and an
    input example from the data it used; other model objects get a one-line note.
    """
    syntax = active.syntax
    names = [*estimator_names(active), *_trained_here(active, namespace)]
    found, notes = frameworks.models_in(names, namespace, syntax.fitted)
    for note in notes:
        warn(note)
    candidates = [*(n for n in syntax.fitted.values() if n), *syntax.bound_names,
                  *syntax.read_names]
    models = []
    for model in found:
        fitted_on = syntax.fitted.get(model.name)
        if model.flavor == "sklearn":
            example = estimators.input_example(namespace.get(fitted_on or ""))
        else:
            order = [fitted_on, *candidates] if fitted_on else candidates
            example = frameworks.input_example(model, dict.fromkeys(order), namespace)
        models.append(ModelCapture(
            model.name, model.model, example, flavor=model.flavor, tokenizer=model.tokenizer,
            serve_logits=frameworks.serves_logits(model), note=model.note))
    for name in estimator_names(active):
        value = namespace.get(name)
        kind = None if frameworks.flavor_of(value) else estimators.looks_like_model(value)
        if kind is not None:
            warn(f"model {name!r} ({kind}) not logged: nbtrack has no MLflow flavor for it; "
                 "log it with the matching mlflow.<flavor>.log_model in the cell.")
    return models


def _trained_here(active, namespace: Mapping[str, Any]) -> list[str]:
    """Models and trainers the cell reads from earlier cells and trains: a Trainer it calls
    ``train``/``fit`` on, a torch module whose parameters an optimizer it reads or binds holds.
    """
    syntax = active.syntax
    read = [n for n in syntax.read_names if not is_shell_name(n)]
    trained = [n for n in read if n in frameworks.trained_receivers(active.cell.code)]
    optimizers = [namespace.get(n) for n in (*read, *syntax.bound_names)
                  if frameworks.is_optimizer(namespace.get(n))]
    if optimizers:
        trained += [n for n in read if frameworks.optimized_by(namespace.get(n), optimizers)]
    return trained


def cell_series(active, namespace: Mapping[str, Any], ended_ms: int
                ) -> dict[str, Series]:
    """The series: what the cell logged with ``log_metric``, then the frameworks' curves (what
    Lightning's ``self.log`` recorded, boosters' evaluation records, Keras and Hugging Face
    histories) under keys the cell did not log itself.
    """
    series = dict(active.series)
    names = [*estimator_names(active), *active.syntax.read_names]
    found = dict(active.lightning.curves) if active.lightning is not None else {}
    for key, points in curves.collect([n for n in names if not is_shell_name(n)],
                                      namespace).items():
        found.setdefault(key, points)
    for key, points in found.items():
        if key in series or not points:
            continue
        curve = series[key] = Series(key)
        for step, value in points:
            curve.add(value, step, ended_ms)
    return series
