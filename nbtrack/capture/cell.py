"""What a tracked cell yields, as plain functions over its namespace (a dict) and its syntax.

:class:`ActiveCell` is the tracked cell while it runs; :func:`build_record` turns it, the namespace
it ran in and its exception into the :class:`~nbtrack.record.CellRecord` the store gets. Each rule
is a function of its own (params, metrics, models, tags, hidden state), testable on plain dicts
and source strings, with no shell and no MLflow.
"""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbtrack.capture import curves, datasets, estimators, frameworks, lineage, sanitize
from nbtrack.capture.figures import FigureCollector
from nbtrack.capture.notebook import notebook_snapshot, saved_cells
from nbtrack.capture.pruning import TrialPruned
from nbtrack.capture.secrets import Redactor, is_secret_name
from nbtrack.capture.source import CellSyntax, is_shell_name
from nbtrack.capture.training import cell_models, cell_series, setting_names
from nbtrack.capture.upstream import upstream_params
from nbtrack.capture.values import flatten_param, metric_number, param_text
from nbtrack.config import (
    BATCH_ENV,
    EXECUTION_ID_ENV,
    PARAMETERS_ENV,
    PARENT_RUN_ENV,
    SWEEP_ID_ENV,
    TRIAL_ENV,
    Nbtrack,
    batch_runner,
)
from nbtrack.display import short_error as _short
from nbtrack.record import (
    BATCH_TAG,
    CAPTURE_TAG,
    CELL_ID_TAG,
    CELL_TAG,
    ERROR_TAG,
    EXECUTION_COUNT_TAG,
    EXECUTION_TAG,
    FAILED,
    FINISHED,
    HIDDEN_STATE_TAG,
    KILLED,
    NOTEBOOK_TAG,
    PARENT_RUN_TAG,
    PRUNED_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    UPSTREAM_TAG,
    Artifact,
    CellContext,
    CellRecord,
    ModelCapture,
    Series,
    TrackOptions,
)

# git answers in milliseconds; a repository on a hung network mount must not hold the cell.
GIT_WAIT_SECONDS = 5


@dataclass
class ActiveCell:
    """The tracked cell that is running now, and what it has logged so far."""

    cell: CellContext
    options: TrackOptions
    syntax: CellSyntax
    experiment: str
    run_name: str
    notebook: Path | None
    started_ms: int
    read_params: dict[str, Any]
    names_before: frozenset[str]
    figures: FigureCollector
    settings: Nbtrack
    environ: Mapping[str, str]  # the kernel's environment: notebook path, batch ids, secrets
    run_id: str | None = None
    tracking_uri: str | None = None
    begun_path: Path | None = None
    git: Future | None = None  # the repository's state, read on a thread while the cell runs
    spool: Any = None  # the journal's SeriesSpool: the series so far, for a kernel that dies
    spooled_ms: int = 0  # when the series were last spooled (or the cell started)
    spool_failed: bool = False
    explicit_params: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)
    lightning: curves.LightningTap | None = None  # self.log, recorded while the cell runs
    live_tap: curves.LiveTap | None = None  # Keras and HF points while they train (live panel)
    autologged: frozenset[str] = frozenset()  # flavors whose models mlflow.autolog logs itself
    system: Any = None  # the SystemSampler of CPU, memory and GPU while the cell runs
    live: Any = None  # the LivePanel drawing the series under the running cell
    pruning: Any = None  # the PruneChannel of a search's trial run with --prune
    problems: list[str] = field(default_factory=list)


def build_record(active: ActiveCell, namespace: Mapping[str, Any], error: BaseException | None,
                 ended_ms: int) -> CellRecord:
    """The record of a tracked cell that ended, from the namespace it ran in and its exception.

    What cannot be captured is noted in ``active.problems`` (one line each) and left out.
    """
    warn = active.problems.append
    options, syntax, settings = active.options, active.syntax, active.settings
    redactor = redactor_for(active, namespace)

    upstream = cell_upstream(active, namespace, warn)
    params = cell_params(active, namespace, warn, upstream)
    params_text = {}
    for key, value in params.items():
        try:
            params_text[key] = redactor.redact(param_text(value))
        except Exception as error:  # e.g. a __str__ that raises
            warn(f"param {key!r} not logged: its value cannot be written as text "
                 f"({_short(error)}).")
    series = cell_series(active, namespace, ended_ms)
    if active.system is not None:
        for key, samples in active.system.series.items():
            series.setdefault(key, samples)
    metrics = {key: value for key, value in cell_metrics(active, namespace, warn).items()
               if key not in series}

    models: list[ModelCapture] = []
    if options.model and settings.models:
        models = [model for model in cell_models(active, namespace, warn)
                  if model.flavor not in active.autologged]  # autolog logged it in this run

    data: list = []
    if settings.datasets:
        pairs = [(n, "read") for n in syntax.read_names if n in active.names_before]
        pairs += [(n, "bound") for n in syntax.bound_names]
        data, skipped = datasets.collect(pairs, namespace)
        if skipped:
            warn(f"{skipped} more DataFrames/arrays not logged as datasets "
                 f"(at most {datasets.MAX_DATASETS} a run).")

    if options.figures and settings.figures:
        active.figures.finish()
    problems = active.figures.problems
    active.problems.extend(problems)

    artifacts = [
        Artifact("cell/source.py", redactor.redact(active.cell.raw_source).encode()),
        *active.figures.artifacts(),
    ]
    if settings.history:
        entries = [*active.cell.history, (active.cell.execution_count or 0, active.cell.raw_source)]
        artifacts.append(
            Artifact("lineage/history.py", lineage.history_text(entries, redactor).encode())
        )
    snapshot = None
    if active.notebook is not None and (settings.notebook_snapshot or settings.history):
        snapshot = notebook_snapshot(active.notebook, redactor)
    if settings.notebook_snapshot and snapshot is not None:
        artifacts.append(Artifact(f"lineage/{active.notebook.name}", snapshot))

    status = run_status(error)
    tags = run_tags(active, error, redactor)
    from_upstream = sorted(k for k in upstream if k in params and params[k] is upstream[k])
    if from_upstream:
        tags[UPSTREAM_TAG] = ", ".join(from_upstream)
    if settings.history:
        hidden = hidden_state(active, redactor, snapshot, warn)
        if hidden:
            tags[HIDDEN_STATE_TAG] = hidden
    if error is not None and status == FAILED:
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        artifacts.append(Artifact("error/traceback.txt", redactor.redact(trace).encode()))

    series = tuple(sanitize.series(list(series.values()), warn))
    return CellRecord(
        experiment=active.experiment,
        run_name=active.run_name,
        start_time_ms=active.started_ms,
        end_time_ms=ended_ms,
        status=status,
        params=sanitize.params(params_text, warn),
        metrics=sanitize.metrics(metrics, warn),
        series=series,
        tags=sanitize.tags(tags, warn),
        artifacts=tuple(artifacts),
        models=tuple(models),
        datasets=tuple(data),
        register_as=options.register,
        run_id=active.run_id,
    )

def minimal_record(active: ActiveCell, error: BaseException | None, ended_ms: int) -> CellRecord:
    """The cell's source and status only: what is recorded when capture itself failed."""
    redactor = redactor_for(active)
    return CellRecord(
        experiment=active.experiment,
        run_name=active.run_name,
        start_time_ms=active.started_ms,
        end_time_ms=ended_ms,
        status=run_status(error),
        tags={"mlflow.source.type": "NOTEBOOK", CAPTURE_TAG: "partial"},
        artifacts=(Artifact("cell/source.py", redactor.redact(active.cell.raw_source).encode()),),
        run_id=active.run_id,
    )

def redactor_for(active: ActiveCell, namespace: Mapping[str, Any] | None = None) -> Redactor:
    """The redactor for what the cell's run logs: secrets named in the environment and the cell's
    source and, once the cell has run (``namespace``), in its namespace and the kernel's history.
    """
    redactor = Redactor()
    redactor.add_from_environment(active.environ)
    redactor.add_from_source(active.cell.raw_source)
    if namespace is not None:
        redactor.add_from_namespace(namespace)
        redactor.add_from_source(active.cell.code)
        for _, source in active.cell.history:
            redactor.add_from_source(source)
    return redactor


def cell_params(active: ActiveCell, namespace: Mapping[str, Any], warn,
                upstream: Mapping[str, Any] = {}) -> dict[str, Any]:  # noqa: B006 (never changed)
    """The params: names ``--params`` lists, else ``upstream`` values, literals the cell binds,
    simple values it reads from earlier cells and the settings of models, optimizers and trainers
    it binds, fits or reads; then injected values and ``log_param`` calls (which win).
    Secret-named ones are left out.
    """
    limit = active.settings.max_collection_items
    params: dict[str, Any] = {}
    if active.options.params is not None:
        for name in active.options.params:
            if name not in namespace:
                warn(f"param {name!r} named in --params is not defined: not logged.")
                continue
            flat = flatten_param(name, namespace[name], limit)
            if flat is None:
                warn(f"param {name!r} not logged: a {type(namespace[name]).__name__} "
                     "is not a number, string, bool or small list/dict.")
                continue
            params.update(flat)
    else:
        params.update(upstream)
        params.update(active.read_params)
        for name, literal in active.syntax.literal_bindings.items():
            # What the cell set, not what it computed since (`losses = []`, then appends).
            if is_shell_name(name) or not _unchanged(namespace.get(name, literal), literal):
                continue
            flat = flatten_param(name, literal, limit)
            if flat is not None:
                params.update(flat)
        for name in frameworks.booster_params_names(active.cell.code):
            # The dict a booster was trained with, computed or not (`{"seed": seed, ...}`).
            value = namespace.get(name)
            if isinstance(value, dict) and not is_shell_name(name):
                params.update(flatten_param(name, value, limit) or {})
        for name in setting_names(active):
            value = namespace.get(name)
            if estimators.is_estimator(value) and estimators.is_fitted(value):
                params.update(estimators.hyperparameters(name, value))
            elif frameworks.has_hyperparameters(value):
                params.update(frameworks.hyperparameters(name, value, limit))
    params.update(injected_parameters(active.environ, active.settings.max_collection_items, warn))
    params = {k: v for k, v in params.items() if not is_secret_name(k)}
    for key, value in active.explicit_params.items():
        if key in params and param_text(params[key]) != param_text(value):
            warn(f"param {key!r} logged as {param_text(value)!r} by log_param; "
                 f"the cell's value {param_text(params[key])!r} is not logged.")
        params[key] = value
    return params

def cell_upstream(active: ActiveCell, namespace: Mapping[str, Any], warn) -> dict[str, Any]:
    """Simple values of earlier cells that what the cell reads was made from (the ``seed`` its
    ``X_train`` was split with), through the kernel's history; {} with ``--params``.
    """
    if active.options.params is not None or not active.settings.history:
        return {}
    syntax = active.syntax
    try:
        return upstream_params(active.cell.history, syntax.read_names, namespace,
                               active.settings.max_collection_items,
                               bound_names=[*syntax.bound_names, *syntax.loop_variables])
    except Exception as error:  # a rule of ours must not cost the cell its run
        warn(f"upstream params not followed: {_short(error)}")
        return {}


def injected_parameters(environ: Mapping[str, str], limit: int, warn) -> dict[str, Any]:
    """Values ``nbtrack run -p/--grid`` injected into this execution's notebook."""
    text = environ.get(PARAMETERS_ENV)
    if not text:
        return {}
    import json

    try:
        injected = json.loads(text)
    except ValueError:
        warn("NBTRACK_PARAMETERS is not JSON: the injected parameters are not logged.")
        return {}
    params: dict[str, Any] = {}
    for name, value in injected.items():
        params.update(flatten_param(name, value, limit)
                      or {name: str(value)})
    return params

def cell_metrics(active: ActiveCell, namespace: Mapping[str, Any], warn) -> dict[str, float]:
    """The metrics: names ``--metrics`` lists, else numbers the cell binds from computed
    expressions (not loop variables, not shell-owned or secret names).
    """
    syntax = active.syntax
    if active.options.metrics is not None:
        names = list(active.options.metrics)
    else:
        names = [
            n for n in syntax.computed_names
            if n not in syntax.loop_variables and not is_shell_name(n)
        ]
    metrics: dict[str, float] = {}
    for name in names:
        if is_secret_name(name):
            continue
        if name not in namespace:
            if active.options.metrics is not None:
                warn(f"metric {name!r} named in --metrics is not defined: not logged.")
            continue
        number = metric_number(namespace[name])
        if number is None:
            if active.options.metrics is not None:
                warn(f"metric {name!r} not logged: a {type(namespace[name]).__name__} "
                     "is not a number.")
            continue
        metrics[name] = number
    return metrics

def _unchanged(value: Any, literal: Any) -> bool:
    try:
        return type(value) is type(literal) and bool(value == literal)
    except Exception:  # an == that raises or is not a truth value
        return False


def run_tags(active: ActiveCell, error: BaseException | None, redactor: Redactor):
    """The run's tags: source and notebook, cell identity, user, git state, package versions,
    batch ids, the error, and the ``-t`` tags.
    """
    cell = active.cell
    notebook = str(active.notebook) if active.notebook else "<ipython>"
    identity = cell.cell_id or "src-" + hashlib.sha1(
        f"{notebook}\n{cell.code.strip()}".encode()
    ).hexdigest()[:12]
    tags = {
        "mlflow.runName": active.run_name,
        "mlflow.source.type": "NOTEBOOK",
        "mlflow.source.name": notebook,
        "mlflow.user": lineage.current_user(active.environ),
        "mlflow.note.content": "```python\n" + redactor.redact(cell.raw_source) + "\n```",
        NOTEBOOK_TAG: notebook,
        CELL_TAG: identity,
    }
    if cell.cell_id:
        tags[CELL_ID_TAG] = cell.cell_id
    if cell.execution_count is not None:
        tags[EXECUTION_COUNT_TAG] = str(cell.execution_count)
    git = git_state(active)
    if "commit" in git:
        tags["mlflow.source.git.commit"] = git["commit"]
    for key in ("dirty", "branch"):
        if key in git:
            tags[f"nbtrack.git.{key}"] = git[key]
    for package, version in lineage.package_versions().items():
        tags[f"nbtrack.version.{package}"] = version
    runner = batch_runner(active.environ)
    if runner:
        tags[BATCH_TAG] = runner
    for variable, tag in ((SWEEP_ID_ENV, SWEEP_TAG),
                          (EXECUTION_ID_ENV, EXECUTION_TAG),
                          (TRIAL_ENV, TRIAL_TAG),
                          (PARENT_RUN_ENV, PARENT_RUN_TAG)):
        if active.environ.get(variable):
            tags[tag] = active.environ[variable]
    if isinstance(error, TrialPruned):
        tags[PRUNED_TAG] = "true"
    if error is not None:
        tags[ERROR_TAG] = redactor.redact(
            f"{type(error).__name__}: {error}".strip().rstrip(":")
        )[:500]
    for key, value in active.options.tags.items():
        tags[key] = redactor.redact(value)
    return tags



def opening_tags(active: ActiveCell) -> dict[str, str]:
    """Tags a run gets when it is opened before its cell runs: enough to find and explain
    it should the kernel die before the cell ends.
    """
    notebook = str(active.notebook) if active.notebook else "<ipython>"
    tags = {"mlflow.source.type": "NOTEBOOK", "mlflow.source.name": notebook,
            NOTEBOOK_TAG: notebook}
    for variable, tag in ((SWEEP_ID_ENV, SWEEP_TAG),
                          (EXECUTION_ID_ENV, EXECUTION_TAG),
                          (TRIAL_ENV, TRIAL_TAG),
                          (PARENT_RUN_ENV, PARENT_RUN_TAG),
                          (BATCH_ENV, BATCH_TAG)):
        if active.environ.get(variable):
            tags[tag] = active.environ[variable]
    return tags



def git_state(active: ActiveCell) -> dict[str, str]:
    """The git state read while the cell ran (or now, if that could not be started)."""
    if active.git is None:
        return lineage.git_state(active.notebook.parent if active.notebook else active.cell.cwd)
    try:
        return active.git.result(timeout=GIT_WAIT_SECONDS)
    except Exception:  # git hung or failed: the run goes without its commit
        return {}


def run_status(error: BaseException | None) -> str:
    """FINISHED, KILLED (Ctrl-C) or FAILED, from the cell's exception."""
    if error is None:
        return FINISHED
    if isinstance(error, (KeyboardInterrupt, TrialPruned)):
        return KILLED
    return FAILED


def hidden_state(active: ActiveCell, redactor: Redactor, snapshot: bytes | None, warn) -> str:
    """What the kernel's history shows that the saved notebook does not (cells run out of order,
    edited after they ran, names no saved cell defines), one line; "" when nothing.
    """
    try:
        from nbtrack.capture import history

        cell = active.cell
        entries = [history.Entry(count, redactor.redact_cached(source))
                   for count, source in (*cell.history, (cell.execution_count or 0, cell.raw_source))]
        return history.summary(history.find(entries, saved_cells(snapshot)))
    except Exception as error:  # a check of ours must not cost the cell its run
        warn(f"hidden notebook state not checked: {_short(error)}")
        return ""


def default_run_name(notebook: Path | None, execution_count: int | None) -> str:
    """``<notebook stem> #<execution count>``, e.g. ``train #12``."""
    stem = notebook.stem if notebook is not None else "ipython"
    return f"{stem} #{execution_count}" if execution_count is not None else stem


def read_params(syntax: CellSyntax, namespace: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """Simple values of names the cell reads that earlier cells defined (e.g. a ``seed``)."""
    bound = set(syntax.bound_names) | syntax.loop_variables
    params: dict[str, Any] = {}
    for name in syntax.read_names:
        if name in bound or is_shell_name(name) or name not in namespace:
            continue
        flat = flatten_param(name, namespace[name], limit)
        if flat is not None:
            params.update(flat)
    return params


