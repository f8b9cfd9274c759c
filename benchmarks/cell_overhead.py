"""Per-cell overhead of ``%%track`` on the showcase notebook's tracked cells.

For each ``%%track`` cell of ``notebooks/train_v2_final.ipynb`` three variants run in one
in-process IPython shell, interleaved, each ``--repeats`` times after one untimed warm-up pass:

``untracked``
    the cell body without its ``%%track`` line (``nbtrack.log_metric`` calls go to a no-op);
``tracked``
    the cell as written, nbtrack loaded;
``hand``
    the body wrapped in MLflow's fluent API the way a careful user records the same content by
    hand (params, metrics, series, figures, model, datasets). These versions are written out
    below in :data:`HAND_WRITTEN`, one per cell, so a reviewer can compare them with the notebook.

After the notebook's cells comes issue 6's reference cell (:data:`REFERENCE`): 10 params, 5
metrics and 1 figure and almost no work of its own, so its added latency (tracked minus
untracked median) is what nbtrack costs such a cell; the target is under 10 ms. It runs
``REFERENCE_RUNS`` times per repeat, for a steadier median and p95, and then once more with a
non-displaying backend (:data:`REFERENCE_UNDISPLAYED`, as in a script or a terminal), where nobody
draws the figure unless its logger does.

Figures are displayed the way Jupyter displays them: matplotlib-inline draws each figure to PNG at
the end of the cell, and nbtrack logs that PNG rather than drawing the figure again. Before each
timed execution nbtrack's background writer is drained (untimed), so one cell's background writing
does not land in the next cell's time; the user reading a cell's output gives the writer the same
pause. What that pause hides is measured too: the reference cells also run ``REFERENCE_RUNS``
times back to back, the tracked ones followed by ``nbtrack.flush()`` (until the store has every
run), and the back-to-back time per cell is reported beside the paused one.

Times are wall-clock seconds of ``shell.run_cell`` (compile, run, IPython's hooks, and for the
tracked cell nbtrack's capture and its write to the store). The store is a fresh SQLite file in a
temporary folder. After timing, every run a timed or warm-up execution made is read back with
``MlflowClient`` and checked against the content its cell should record; the exit status is 1 if
any check fails. Timings are reported, never asserted.

Run from the repository root::

    python -m benchmarks              # 5 repeats
    python -m benchmarks --quick      # 1 repeat and no warm-up, for CI (cold numbers)
    python -m benchmarks.cell_overhead --repeats 10

Results are printed and written as JSON to ``benchmarks/results/cell_overhead.json`` (or
``$NBTRACK_BENCH_RESULTS/cell_overhead.json``).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import _framework_cells as frameworks
from benchmarks._common import results_dir

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "train_v2_final.ipynb"

VARIANTS = ("untracked", "tracked", "hand")
DEFAULT_REPEATS = 5
QUICK_REPEATS = 1
TRACKED_EXPERIMENT = "cell-overhead-tracked"
HAND_EXPERIMENT = "cell-overhead-hand"
REFERENCE_RUNS = 4  # executions of the reference cell per repeat and variant
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # a Jupyter kernel's default
STDERR_LINES_SHOWN = 4  # per untracked / hand-written variant; the JSON has them all

# In the untracked variant the cell's nbtrack.log_metric calls go to this no-op instead.
NOOP_LOG_METRIC = "log_metric_noop"

_TRACK_LINE = re.compile(r"^%%track(\s.*)?$")


class BenchmarkError(Exception):
    """The benchmark cannot run as set up (notebook changed, a cell failed, ...)."""


# -- the hand-written MLflow versions of the tracked cells ---------------------------------------


@dataclass(frozen=True)
class HandWritten:
    """A tracked cell rewritten with MLflow's fluent API, and the content both must record.

    ``series`` maps a stepped metric to the notebook variable holding its number of steps.
    """

    run_name: str
    code: str
    metrics: tuple[str, ...]
    figures: int
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    series: dict[str, str] = field(default_factory=dict)


HAND_WRITTEN = (
    HandWritten(
        run_name="logreg-C0.01",
        code='''\
with mlflow.start_run(run_name="logreg-C0.01", experiment_id=hand_experiment_id):
    C = 0.01
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    clf.fit(X_train, y_train)
    val_auc = roc_auc_score(y_test, clf.predict_proba(X_test)[:, 1])
    val_acc = accuracy_score(y_test, clf.predict(X_test))
    print(f"C={C}: val_auc={val_auc:.4f}")

    mlflow.log_params({"C": C, "max_iter": max_iter, "seed": seed, "test_size": test_size,
                       **{f"clf.{key}": value for key, value in clf.get_params().items()
                          if isinstance(value, (str, int, float, bool, type(None)))}})
    mlflow.log_metrics({"val_auc": val_auc, "val_acc": val_acc})
    mlflow.log_input(mlflow.data.from_pandas(X_train, name="X_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(y_train.to_frame(), name="y_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(X_test, name="X_test"), context="validation")
    mlflow.log_input(mlflow.data.from_pandas(y_test.to_frame(), name="y_test"), context="validation")
    mlflow.sklearn.log_model(clf, name="clf", input_example=X_train.head(5))
''',
        metrics=("val_auc", "val_acc"),
        figures=0,
        models=("clf",),
        datasets=("X_train", "y_train", "X_test", "y_test"),
    ),
    HandWritten(
        run_name="logreg-C0.1",
        code='''\
with mlflow.start_run(run_name="logreg-C0.1", experiment_id=hand_experiment_id):
    C = 0.1
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    clf.fit(X_train, y_train)
    val_auc = roc_auc_score(y_test, clf.predict_proba(X_test)[:, 1])
    val_acc = accuracy_score(y_test, clf.predict(X_test))
    print(f"C={C}: val_auc={val_auc:.4f}")

    mlflow.log_params({"C": C, "max_iter": max_iter, "seed": seed, "test_size": test_size,
                       **{f"clf.{key}": value for key, value in clf.get_params().items()
                          if isinstance(value, (str, int, float, bool, type(None)))}})
    mlflow.log_metrics({"val_auc": val_auc, "val_acc": val_acc})
    mlflow.log_input(mlflow.data.from_pandas(X_train, name="X_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(y_train.to_frame(), name="y_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(X_test, name="X_test"), context="validation")
    mlflow.log_input(mlflow.data.from_pandas(y_test.to_frame(), name="y_test"), context="validation")
    mlflow.sklearn.log_model(clf, name="clf", input_example=X_train.head(5))
''',
        metrics=("val_auc", "val_acc"),
        figures=0,
        models=("clf",),
        datasets=("X_train", "y_train", "X_test", "y_test"),
    ),
    HandWritten(
        run_name="logreg-C1.0",
        code='''\
with mlflow.start_run(run_name="logreg-C1.0", experiment_id=hand_experiment_id):
    C = 1.0
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    clf.fit(X_train, y_train)
    val_auc = roc_auc_score(y_test, clf.predict_proba(X_test)[:, 1])
    val_acc = accuracy_score(y_test, clf.predict(X_test))
    print(f"C={C}: val_auc={val_auc:.4f}")

    mlflow.log_params({"C": C, "max_iter": max_iter, "seed": seed, "test_size": test_size,
                       **{f"clf.{key}": value for key, value in clf.get_params().items()
                          if isinstance(value, (str, int, float, bool, type(None)))}})
    mlflow.log_metrics({"val_auc": val_auc, "val_acc": val_acc})
    mlflow.log_input(mlflow.data.from_pandas(X_train, name="X_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(y_train.to_frame(), name="y_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(X_test, name="X_test"), context="validation")
    mlflow.log_input(mlflow.data.from_pandas(y_test.to_frame(), name="y_test"), context="validation")
    mlflow.sklearn.log_model(clf, name="clf", input_example=X_train.head(5))
''',
        metrics=("val_auc", "val_acc"),
        figures=0,
        models=("clf",),
        datasets=("X_train", "y_train", "X_test", "y_test"),
    ),
    HandWritten(
        run_name="random-forest",
        # MLflow's default (skops) format refuses to save a forest unless its tree type is named
        # trusted; a user who hits that error follows its advice, as here.
        code='''\
with mlflow.start_run(run_name="random-forest", experiment_id=hand_experiment_id):
    rf = RandomForestClassifier(n_estimators=n_estimators, random_state=seed)
    rf.fit(X_train, y_train)
    val_auc = roc_auc_score(y_test, rf.predict_proba(X_test)[:, 1])
    val_acc = accuracy_score(y_test, rf.predict(X_test))
    fig, ax = plt.subplots(figsize=(4, 4))
    RocCurveDisplay.from_estimator(rf, X_test, y_test, ax=ax)
    ax.set_title(f"Random forest ROC (AUC {val_auc:.3f})")
    mlflow.log_figure(fig, "figures/roc.png")
    plt.show()

    mlflow.log_params({"n_estimators": n_estimators, "seed": seed, "test_size": test_size,
                       **{f"rf.{key}": value for key, value in rf.get_params().items()
                          if isinstance(value, (str, int, float, bool, type(None)))}})
    mlflow.log_metrics({"val_auc": val_auc, "val_acc": val_acc})
    mlflow.log_input(mlflow.data.from_pandas(X_train, name="X_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(y_train.to_frame(), name="y_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(X_test, name="X_test"), context="validation")
    mlflow.log_input(mlflow.data.from_pandas(y_test.to_frame(), name="y_test"), context="validation")
    mlflow.sklearn.log_model(rf, name="rf", input_example=X_train.head(5),
                             skops_trusted_types=["sklearn.tree._tree.Tree"])
''',
        metrics=("val_auc", "val_acc"),
        figures=1,
        models=("rf",),
        datasets=("X_train", "y_train", "X_test", "y_test"),
    ),
    HandWritten(
        run_name="sgd-epochs",
        code='''\
with mlflow.start_run(run_name="sgd-epochs", experiment_id=hand_experiment_id):
    scaler = StandardScaler().fit(X_train)
    X_train_s = scaler.transform(X_train)
    X_test_s = scaler.transform(X_test)
    sgd = SGDClassifier(loss="log_loss", random_state=seed)
    for epoch in range(epochs):
        sgd.partial_fit(X_train_s, y_train, classes=[0, 1])
        mlflow.log_metric("train_loss", log_loss(y_train, sgd.predict_proba(X_train_s)), step=epoch)
    val_auc = roc_auc_score(y_test, sgd.predict_proba(X_test_s)[:, 1])
    val_acc = accuracy_score(y_test, sgd.predict(X_test_s))
    ConfusionMatrixDisplay.from_estimator(sgd, X_test_s, y_test)
    plt.title("SGD confusion matrix")
    mlflow.log_figure(plt.gcf(), "figures/confusion-matrix.png")
    plt.show()

    mlflow.log_params({"epochs": epochs, "seed": seed, "test_size": test_size,
                       **{f"scaler.{key}": value for key, value in scaler.get_params().items()
                          if isinstance(value, (str, int, float, bool, type(None)))},
                       **{f"sgd.{key}": value for key, value in sgd.get_params().items()
                          if isinstance(value, (str, int, float, bool, type(None)))}})
    mlflow.log_metrics({"val_auc": val_auc, "val_acc": val_acc})
    mlflow.log_input(mlflow.data.from_pandas(X_train, name="X_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(y_train.to_frame(), name="y_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(X_test, name="X_test"), context="validation")
    mlflow.log_input(mlflow.data.from_pandas(y_test.to_frame(), name="y_test"), context="validation")
    mlflow.log_input(mlflow.data.from_numpy(X_train_s, name="X_train_s"), context="training")
    mlflow.log_input(mlflow.data.from_numpy(X_test_s, name="X_test_s"), context="validation")
    mlflow.sklearn.log_model(scaler, name="scaler", input_example=X_train.head(5))
    mlflow.sklearn.log_model(sgd, name="sgd", input_example=X_train_s[:5])
''',
        metrics=("val_auc", "val_acc"),
        figures=1,
        models=("scaler", "sgd"),
        datasets=("X_train", "y_train", "X_test", "y_test", "X_train_s", "X_test_s"),
        series={"train_loss": "epochs"},
    ),
    HandWritten(
        run_name="xgboost",
        code='''\
with mlflow.start_run(run_name="xgboost", experiment_id=hand_experiment_id):
    import xgboost as xgb
    dtrain = xgb.DMatrix(X_train, label=y_train)
    dval = xgb.DMatrix(X_test, label=y_test)
    {boost_params}
    evals = {}
    booster = xgb.train(boost_params, dtrain, num_boost_round=n_estimators, evals=[(dval, "val")],
                        evals_result=evals, verbose_eval=False)
    val_auc = roc_auc_score(y_test, booster.predict(dval))
    val_acc = accuracy_score(y_test, booster.predict(dval) > 0.5)
    print(f"xgboost: val_auc={val_auc:.4f} val_acc={val_acc:.4f}")

    mlflow.log_params({"n_estimators": n_estimators, "seed": seed, "test_size": test_size,
                       "booster.num_boost_round": n_estimators})
    mlflow.log_params({f"boost_params.{key}": value for key, value in boost_params.items()})
    for step, value in enumerate(evals["val"]["auc"]):
        mlflow.log_metric("val-auc", value, step=step)
    mlflow.log_metrics({"val_auc": val_auc, "val_acc": val_acc})
    mlflow.log_input(mlflow.data.from_pandas(X_train, name="X_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(y_train.to_frame(), name="y_train"), context="training")
    mlflow.log_input(mlflow.data.from_pandas(X_test, name="X_test"), context="validation")
    mlflow.log_input(mlflow.data.from_pandas(y_test.to_frame(), name="y_test"), context="validation")
    mlflow.xgboost.log_model(booster, name="booster", input_example=X_train.head(5))
'''.replace("{boost_params}", 'boost_params = {"objective": "binary:logistic", "eval_metric": "auc", '
                                 '"max_depth": 3, "eta": 0.1, "seed": seed}'),
        metrics=("val_auc", "val_acc", "val-auc"),
        figures=0,
        models=("booster",),
        datasets=("X_train", "y_train", "X_test", "y_test"),
        series={"val-auc": "n_estimators"},
    ),
    HandWritten(
        run_name="reference-10p-5m-1f",
        code='''\
with mlflow.start_run(run_name="reference-10p-5m-1f", experiment_id=hand_experiment_id):
    lr = 0.01
    batch_size = 32
    n_layers = 4
    width = 256
    dropout = 0.1
    weight_decay = 0.0001
    warmup_steps = 100
    optimizer = "adam"
    activation = "relu"
    schedule = "cosine"
    loss = lr * 10 + dropout
    acc = 1.0 - loss / 2
    auc = acc * 0.99
    f1 = acc * 0.98
    recall = acc * 0.97
    ref_fig, ref_ax = plt.subplots(figsize=(3, 2))
    ref_ax.plot([0, 1, 2, 3, 4], [loss, acc, auc, f1, recall])
    mlflow.log_figure(ref_fig, "figures/reference.png")
    plt.show()

    mlflow.log_params({"lr": lr, "batch_size": batch_size, "n_layers": n_layers, "width": width,
                       "dropout": dropout, "weight_decay": weight_decay,
                       "warmup_steps": warmup_steps, "optimizer": optimizer,
                       "activation": activation, "schedule": schedule})
    mlflow.log_metrics({"loss": loss, "acc": acc, "auc": auc, "f1": f1, "recall": recall})
''',
        metrics=("loss", "acc", "auc", "f1", "recall"),
        figures=1,
        models=(),
        datasets=(),
    ),
)


def _undisplayed_twin(hand: HandWritten) -> HandWritten:
    name = hand.run_name + "-undisplayed"
    code = hand.code.replace(f'run_name="{hand.run_name}"', f'run_name="{name}"')
    return replace(hand, run_name=name, code=code)


# The reference cell run with Agg is logged by hand the same way, under its own run name.
HAND_WRITTEN += tuple(_undisplayed_twin(h) for h in HAND_WRITTEN if h.run_name == "reference-10p-5m-1f")

# Run once in the shell after the notebook's setup cells, before anything is timed: what the
# notebook's author would have in an early cell when writing the hand-written versions.
# The hand-written runs name their experiment in start_run rather than with
# mlflow.set_experiment(): with MLflow 3.17, a kernel-wide set_experiment() to another experiment
# makes nbtrack's model logging fail in every tracked cell ("Cannot start run with ID ... because
# active experiment ID does not match environment run ID"), so the tracked variant would skip it.
HAND_SETUP = f"""\
import mlflow
import mlflow.data
import mlflow.sklearn
import mlflow.xgboost
hand_experiment_id = mlflow.get_experiment_by_name({HAND_EXPERIMENT!r}).experiment_id
"""
UNTRACKED_SETUP = f"""\
def {NOOP_LOG_METRIC}(key, value, step=None):
    pass
"""
TRACKED_SETUP = f"%track_config -e {TRACKED_EXPERIMENT}"


# -- the notebook ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackedCell:
    """A ``%%track`` cell of the notebook."""

    name: str
    source: str  # as written, %%track line included
    body: str  # without the %%track line
    displayed: bool = True  # False: run with Agg, which shows nothing (a script, a terminal)


_REFERENCE_BODY = """\
lr = 0.01
batch_size = 32
n_layers = 4
width = 256
dropout = 0.1
weight_decay = 0.0001
warmup_steps = 100
optimizer = "adam"
activation = "relu"
schedule = "cosine"
loss = lr * 10 + dropout
acc = 1.0 - loss / 2
auc = acc * 0.99
f1 = acc * 0.98
recall = acc * 0.97
ref_fig, ref_ax = plt.subplots(figsize=(3, 2))
ref_ax.plot([0, 1, 2, 3, 4], [loss, acc, auc, f1, recall])
plt.show()
"""
# Issue 6's reference cell: 10 params, 5 metrics, 1 figure, next to no work of its own.
REFERENCE = TrackedCell("reference-10p-5m-1f", "%%track -n reference-10p-5m-1f\n" + _REFERENCE_BODY,
                        _REFERENCE_BODY)
# The same cell where nothing displays the figure: its logger has to draw it.
REFERENCE_UNDISPLAYED = TrackedCell(
    "reference-10p-5m-1f-undisplayed",
    "%%track -n reference-10p-5m-1f-undisplayed\n" + _REFERENCE_BODY, _REFERENCE_BODY,
    displayed=False,
)
REFERENCES = (REFERENCE, REFERENCE_UNDISPLAYED)


def read_notebook(path: Path) -> tuple[list[str], list[TrackedCell]]:
    """The notebook's setup cells (untracked code cells before the first tracked one) and its
    tracked cells, in order.
    """
    notebook = json.loads(path.read_text(encoding="utf-8"))
    setup: list[str] = []
    tracked: list[TrackedCell] = []
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        first, _, body = source.partition("\n")
        if _TRACK_LINE.match(first.rstrip()):
            tracked.append(TrackedCell(_run_name(first), source, body))
        elif not tracked and source.strip():
            setup.append(source)
    if not tracked:
        raise BenchmarkError(f"{path} has no %%track cells.")
    return setup, tracked


def _run_name(track_line: str) -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-n", "--name")
    args, _ = parser.parse_known_args(shlex.split(track_line)[1:])
    if not args.name:
        raise BenchmarkError(f"tracked cell without -n NAME: {track_line!r}; name it so its "
                             "hand-written version can be found.")
    return args.name


def untracked_body(cell: TrackedCell) -> str:
    """The cell body as it runs without nbtrack."""
    body = cell.body.replace("nbtrack.log_metric(", f"{NOOP_LOG_METRIC}(")
    if "nbtrack." in body:
        raise BenchmarkError(f"cell {cell.name!r} calls nbtrack functions other than log_metric; "
                             "teach untracked_body() to replace them.")
    return body


def check_hand_written(cell: TrackedCell, hand: HandWritten) -> list[str]:
    """Problems that make ``hand`` no longer a rewrite of ``cell`` (every line of the notebook's
    body must appear in it, in order, with nbtrack.log_metric as mlflow.log_metric).
    """
    wanted = [line.strip().replace("nbtrack.log_metric(", "mlflow.log_metric(")
              for line in cell.body.splitlines() if line.strip()]
    have = iter(line.strip() for line in hand.code.splitlines())
    missing = [line for line in wanted if not any(line == candidate for candidate in have)]
    if missing:
        return [f"the hand-written version of {cell.name!r} no longer matches the notebook "
                f"(first line not found in order: {missing[0]!r}); update HAND_WRITTEN."]
    return []


# -- running cells --------------------------------------------------------------------------------


@dataclass
class Execution:
    """One execution of one variant of one cell."""

    cell: str
    variant: str
    repeat: int  # 0-based; -1 for the warm-up
    seconds: float
    run_id: str | None
    stdout: str
    stderr: str
    back_to_back: bool = False  # run right after the previous cell, writer not drained
    # tracked: from the cell's start until its run is FINISHED in the store with its models READY
    store_s: float | None = None


def make_shell():
    """A fresh in-process IPython shell that keeps its history in memory."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    return InteractiveShell.instance(config=config)


def run_cell(shell, code: str, collect: bool = True) -> tuple[float, str, str]:
    """Run ``code`` as a notebook cell; return its wall time, stdout and stderr.

    ``collect``: collect garbage first, so no cell pays for the last one's. Raises
    BenchmarkError when the cell fails.
    """
    out, err = io.StringIO(), io.StringIO()
    if collect:
        gc.collect()
    with redirect_stdout(out), redirect_stderr(err):
        start = time.perf_counter()
        result = shell.run_cell(code, store_history=True)
        seconds = time.perf_counter() - start
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        # Agg shows nothing and closes nothing; the inline backend closed what it showed.
        pyplot.close("all")
    if not result.success:
        error = result.error_in_exec or result.error_before_exec
        raise BenchmarkError(
            f"cell failed: {type(error).__name__}: {error}\n--- cell ---\n{code}\n"
            f"--- stdout ---\n{out.getvalue()}\n--- stderr ---\n{err.getvalue()}"
        )
    return seconds, out.getvalue(), err.getvalue()


def _last_hand_run_id() -> str | None:
    import mlflow

    run = mlflow.last_active_run()
    return run.info.run_id if run is not None else None


def _last_tracked_run_id() -> str | None:
    import nbtrack

    return nbtrack.last_run()


def use_backend(shell, displayed: bool) -> None:
    """Draw figures the way a Jupyter kernel does (inline), or not at all (Agg)."""
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib_inline.backend_inline import configure_inline_support

    backend = INLINE_BACKEND if displayed else "agg"
    if matplotlib.get_backend().lower() != backend.lower():
        plt.switch_backend(backend)
        configure_inline_support(shell, backend)


def drain_writer() -> None:
    """Wait for nbtrack's background writer to empty its queue (not part of any timing)."""
    nbtrack = sys.modules.get("nbtrack")
    if nbtrack is not None and hasattr(nbtrack, "flush"):
        nbtrack.flush()


def execute(shell, cell: TrackedCell, hand: HandWritten, variant: str, repeat: int,
            back_to_back: bool = False) -> Execution:
    """Run one variant of one cell and note the run it made (None for the untracked variant)."""
    code = {"untracked": untracked_body(cell), "tracked": cell.source, "hand": hand.code}[variant]
    last_run = {"untracked": lambda: None, "tracked": _last_tracked_run_id,
                "hand": _last_hand_run_id}[variant]
    use_backend(shell, cell.displayed)
    if back_to_back:  # nothing between the cells: no garbage collection, no lookups
        seconds, stdout, stderr = run_cell(shell, code, collect=False)
        return Execution(cell.name, variant, repeat, seconds, None, stdout, stderr, True)
    drain_writer()
    before = last_run()
    seconds, stdout, stderr = run_cell(shell, code)
    flushed = time.perf_counter()
    if variant == "tracked":  # the cell returned; how long until the store has its run
        drain_writer()
    waited = time.perf_counter() - flushed
    after = last_run()
    run_id = after if after != before else None
    store_s = None
    if variant == "tracked" and run_id is not None:
        polled = wait_in_store(run_id, hand.models)
        store_s = None if polled is None else seconds + waited + polled
    return Execution(cell.name, variant, repeat, seconds, run_id, stdout, stderr, store_s=store_s)


STORE_WAIT_S = 30.0  # after nbtrack.flush(), how long to wait for a run to show as complete


def wait_in_store(run_id: str, models: tuple[str, ...]) -> float | None:
    """Seconds until the run is FINISHED with ``models`` READY: 0.0 if it already is (the usual
    case right after ``nbtrack.flush()``), None if it is not within STORE_WAIT_S.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    started = time.perf_counter()
    while True:
        run = client.get_run(run_id)
        ready = run.info.status == "FINISHED"
        if ready and models:
            logged = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                 filter_string=f"source_run_id = '{run_id}'")
            ready = sorted(m.name for m in logged if str(m.status) == "READY") == sorted(models)
        if ready:
            return 0.0 if time.perf_counter() - started < 0.05 else time.perf_counter() - started
        if time.perf_counter() - started > STORE_WAIT_S:
            return None
        time.sleep(0.02)


def execute_autolog(shell, cell: frameworks.FrameworkCell, repeat: int) -> Execution:
    """Run a framework cell with its flavor's MLflow autolog on (turned on and off untimed, as a
    notebook's earlier cell would), in a run of its own.
    """
    use_backend(shell, True)
    drain_writer()
    run_cell(shell, cell.autolog_on)
    before = _last_hand_run_id()
    try:
        seconds, stdout, stderr = run_cell(shell, cell.autolog)
    finally:
        run_cell(shell, cell.autolog_off)
    after = _last_hand_run_id()
    return Execution(cell.name, "autolog", repeat, seconds, after if after != before else None,
                     stdout, stderr)


def probe_torch_autolog(shell) -> dict:
    """Run the PyTorch cell once with mlflow.pytorch.autolog() on and say what its run holds."""
    from mlflow import MlflowClient

    cell = frameworks.TORCH
    try:
        run_cell(shell, cell.autolog_on)
        try:
            run_cell(shell, frameworks.TORCH_AUTOLOG_PROBE)
        finally:
            run_cell(shell, cell.autolog_off)
    except BenchmarkError as error:
        return {"works": False, "error": _clip(str(error), 400), "note": frameworks.TORCH_AUTOLOG_NOTE}
    client = MlflowClient()
    run = client.get_run(_last_hand_run_id())
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    found = {"params": sorted(run.data.params), "metrics": sorted(run.data.metrics),
             "models": [m.name for m in models],
             "artifacts": [a.path for a in client.list_artifacts(run.info.run_id)]}
    works = bool(found["params"] or found["metrics"] or found["models"])
    return {"works": works, "recorded": found,
            "note": None if works else frameworks.TORCH_AUTOLOG_NOTE}


def framework_variant_order(repeat: int) -> tuple[str, ...]:
    """The framework cells' four variants, rotated so none always goes first."""
    variants = (*VARIANTS, "autolog")
    shift = repeat % len(variants)
    return variants[shift:] + variants[:shift]


def execute_back_to_back(shell, cell: TrackedCell, hand: HandWritten, variant: str,
                         repeat: int, count: int) -> tuple[list[Execution], dict]:
    """Run one variant of a cell ``count`` times in a row, then (tracked) until the store has
    every run: what a "Run All" costs, background writing included.
    """
    use_backend(shell, cell.displayed)
    drain_writer()
    gc.collect()
    started_ms = int(time.time() * 1000)
    started = time.perf_counter()
    executions = [execute(shell, cell, hand, variant, repeat, back_to_back=True)
                  for _ in range(count)]
    cells_done = time.perf_counter()
    drain_writer()
    ended = time.perf_counter()
    if variant != "untracked":  # the runs they made, oldest first, to verify with the others
        run_ids = _runs_since(TRACKED_EXPERIMENT if variant == "tracked" else HAND_EXPERIMENT,
                              hand.run_name, started_ms)
        executions = [replace(execution, run_id=run_id)
                      for execution, run_id in zip(executions, (run_ids + [None] * count)[:count],
                                                   strict=True)]
    return executions, {"cell": cell.name, "variant": variant, "repeat": repeat, "cells": count,
                        "cells_s": cells_done - started, "total_s": ended - started}


def variant_order(repeat: int) -> tuple[str, ...]:
    """The variants in the order they run in this repeat, rotated so none always goes first."""
    shift = repeat % len(VARIANTS)
    return VARIANTS[shift:] + VARIANTS[:shift]


# -- statistics and the table ---------------------------------------------------------------------


def median(values: list[float]) -> float:
    return percentile(values, 50)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(executions: list[Execution], cells: list[TrackedCell]) -> list[dict]:
    """Per cell: samples, median and p95 of each variant, added latency and ratios."""
    rows = []
    for cell in cells:
        row: dict = {"cell": cell.name, "variants": {}}
        for variant in VARIANTS:
            samples = [e.seconds for e in executions if e.cell == cell.name
                       and e.variant == variant and e.repeat >= 0 and not e.back_to_back]
            row["variants"][variant] = {"samples_s": samples, "median_s": median(samples),
                                        "p95_s": percentile(samples, 95)}
        rows.append(row)
    total: dict = {"cell": "the notebook's tracked cells", "variants": {}}
    apart = {c.name for c in REFERENCES} | {c.name for c in frameworks.CELLS}
    notebook_rows = [row for row in rows if row["cell"] not in apart]
    for variant in VARIANTS:
        total["variants"][variant] = {
            key: sum(row["variants"][variant][key] for row in notebook_rows)
            for key in ("median_s", "p95_s")
        }
    rows.append(total)
    for row in rows:
        medians = {variant: row["variants"][variant]["median_s"] for variant in VARIANTS}
        row["added_tracked_s"] = medians["tracked"] - medians["untracked"]
        row["added_hand_s"] = medians["hand"] - medians["untracked"]
        row["ratio_tracked_untracked"] = _ratio(medians["tracked"], medians["untracked"])
        row["ratio_tracked_hand"] = _ratio(medians["tracked"], medians["hand"])
    return rows


def _samples(executions: list[Execution], cell: str, variant: str, key: str = "seconds") -> list:
    return [getattr(e, key) for e in executions if e.cell == cell and e.variant == variant
            and e.repeat >= 0 and not e.back_to_back and getattr(e, key) is not None]


def _stats(samples: list[float]) -> dict | None:
    if not samples:
        return None
    return {"samples_s": samples, "median_s": median(samples), "p95_s": percentile(samples, 95)}


def summarize_frameworks(executions: list[Execution], torch_autolog: dict) -> list[dict]:
    """Per framework cell: each variant's median and p95, what %%track, MLflow by hand and autolog
    add to the untracked cell, and the ratios of %%track's time to the other two.
    """
    rows = []
    for cell in frameworks.CELLS:
        variants = {v: _stats(_samples(executions, cell.name, v)) for v in (*VARIANTS, "autolog")}
        base = variants["untracked"]["median_s"]
        row: dict = {"cell": cell.name, "flavor": cell.flavor, "variants": variants,
                     "added_s": {v: None if variants[v] is None else variants[v]["median_s"] - base
                                 for v in ("tracked", "hand", "autolog")}}
        tracked = variants["tracked"]["median_s"]
        row["ratio_tracked_hand"] = _ratio(tracked, variants["hand"]["median_s"])
        row["ratio_tracked_autolog"] = (None if variants["autolog"] is None
                                        else _ratio(tracked, variants["autolog"]["median_s"]))
        if cell.autolog is None:
            row["autolog_note"] = (torch_autolog.get("note") if cell is frameworks.TORCH
                                   else "no autolog variant")
        rows.append(row)
    return rows


def summarize_in_store(executions: list[Execution], cells: list[str]) -> list[dict]:
    """Per cell that logs a model: how long the tracked cell takes to return and until its run is
    in the store (FINISHED, models READY), against the hand-written cell, which is in the store
    when it returns.
    """
    rows = []
    for cell in cells:
        in_store = _stats(_samples(executions, cell, "tracked", "store_s"))
        hand = _stats(_samples(executions, cell, "hand"))
        if in_store is None or hand is None:
            continue
        rows.append({"cell": cell, "tracked_returns": _stats(_samples(executions, cell, "tracked")),
                     "tracked_in_store": in_store, "hand": hand,
                     "ratio_in_store_hand": _ratio(in_store["median_s"], hand["median_s"])})
    return rows


def format_frameworks(rows: list[dict]) -> str:
    header = ["framework cell", "untracked", "tracked", "p95", "hand", "p95", "autolog", "p95",
              "+tracked", "+hand", "+autolog", "tracked/hand", "tracked/autolog"]
    lines = []
    for row in rows:
        v, added = row["variants"], row["added_s"]
        pair = [(ms(v[k]["median_s"]), ms(v[k]["p95_s"])) if v[k] else ("n/a", "n/a")
                for k in ("tracked", "hand", "autolog")]
        lines.append([row["cell"], ms(v["untracked"]["median_s"]), *pair[0], *pair[1], *pair[2],
                      *(("+" + ms(added[k])) if added[k] is not None else "n/a"
                        for k in ("tracked", "hand", "autolog")),
                      _fmt_ratio(row["ratio_tracked_hand"]),
                      _fmt_ratio(row["ratio_tracked_autolog"])])
    return _fixed_width(header, lines)


def format_in_store(rows: list[dict]) -> str:
    header = ["model cell", "tracked returns", "tracked in store", "p95", "hand (in store)", "p95",
              "in store/hand"]
    lines = [[row["cell"], ms(row["tracked_returns"]["median_s"]),
              ms(row["tracked_in_store"]["median_s"]), ms(row["tracked_in_store"]["p95_s"]),
              ms(row["hand"]["median_s"]), ms(row["hand"]["p95_s"]),
              _fmt_ratio(row["ratio_in_store_hand"])] for row in rows]
    return _fixed_width(header, lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _fixed_width(header: list[str], lines: list[list[str]]) -> str:
    lines = [header, *lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(text.ljust(width) if i == 0 else text.rjust(width)
                               for i, (text, width) in enumerate(zip(line, widths, strict=True)))
                     for line in lines)


def _runs_since(experiment: str, run_name: str, started_ms: int) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id],
        filter_string=f"attributes.run_name = '{run_name}' and attributes.start_time >= {started_ms}",
        order_by=["attributes.start_time ASC"],
    )
    return [run.info.run_id for run in found]


def summarize_back_to_back(blocks: list[dict]) -> list[dict]:
    """Per reference cell: median over repeats of each variant's time per cell when run back to
    back, background writing included, and what tracking and hand-written logging add to it.
    """
    rows = []
    for cell in REFERENCES:
        row: dict = {"cell": cell.name, "variants": {}}
        for variant in VARIANTS:
            mine = [b for b in blocks if b["cell"] == cell.name and b["variant"] == variant
                    and b["repeat"] >= 0]
            if not mine:
                break
            row["variants"][variant] = {
                "per_cell_s": median([b["total_s"] / b["cells"] for b in mine]),
                "cells_only_per_cell_s": median([b["cells_s"] / b["cells"] for b in mine]),
            }
        else:
            per_cell = {v: row["variants"][v]["per_cell_s"] for v in VARIANTS}
            row["added_tracked_s"] = per_cell["tracked"] - per_cell["untracked"]
            row["added_hand_s"] = per_cell["hand"] - per_cell["untracked"]
            rows.append(row)
    return rows


def format_back_to_back(rows: list[dict]) -> str:
    header = ["cell, back to back", "untracked", "tracked", "hand", "+tracked", "+hand"]
    lines = [header]
    for row in rows:
        per_cell = [f"{row['variants'][v]['per_cell_s'] * 1000:,.1f}" for v in VARIANTS]
        lines.append([row["cell"], *per_cell, f"+{row['added_tracked_s'] * 1000:,.1f}",
                      f"+{row['added_hand_s'] * 1000:,.1f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(text.ljust(width) if i == 0 else text.rjust(width)
                               for i, (text, width) in enumerate(zip(line, widths, strict=True)))
                     for line in lines)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def format_table(rows: list[dict], flagged: set[str]) -> str:
    """The results as a fixed-width table, times in milliseconds."""

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:,.1f}"

    def times(row: dict, variant: str) -> list[str]:
        stats = row["variants"][variant]
        return [ms(stats["median_s"]), ms(stats["p95_s"])]

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    header = ["cell", "untracked", "p95", "tracked", "p95", "hand", "p95",
              "+tracked", "+hand", "tracked/untracked", "tracked/hand"]
    lines = [header]
    for row in rows:
        name = row["cell"] + (" (!)" if row["cell"] in flagged else "")
        lines.append([name, *times(row, "untracked"), *times(row, "tracked"), *times(row, "hand"),
                      "+" + ms(row["added_tracked_s"]), "+" + ms(row["added_hand_s"]),
                      ratio(row["ratio_tracked_untracked"]), ratio(row["ratio_tracked_hand"])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(line: list[str]) -> str:
        return "  ".join(
            text.ljust(width) if i == 0 else text.rjust(width)
            for i, (text, width) in enumerate(zip(line, widths, strict=True))
        )

    rendered = [render(line) for line in lines]
    rule = "-" * len(rendered[0])
    return "\n".join([rendered[0], rule, *rendered[1:-1], rule, rendered[-1]])


# -- checking the runs ----------------------------------------------------------------------------


def verify(client, executions: list[Execution], hands: dict[str, HandWritten],
           namespace: dict) -> tuple[list[str], set[str], int]:
    """Read every run the tracked and hand-written executions made and check its content.

    Returns the problems, the cells they concern, and how many runs were checked.
    """
    problems: list[tuple[str, str]] = []
    experiments = {
        "tracked": client.get_experiment_by_name(TRACKED_EXPERIMENT),
        "hand": client.get_experiment_by_name(HAND_EXPERIMENT),
    }
    models_by_run: dict[str, list] = {}
    for experiment in experiments.values():
        if experiment is not None:
            for model in _logged_models(client, experiment.experiment_id):
                models_by_run.setdefault(model.source_run_id, []).append(model)

    checked = 0
    first_runs: dict[tuple[str, str], object] = {}
    for execution in executions:
        if execution.variant == "untracked":
            continue
        where = (f"{execution.variant} run of {execution.cell!r} "
                 f"({'warm-up' if execution.repeat < 0 else f'repeat {execution.repeat + 1}'}"
                 f"{', back to back' if execution.back_to_back else ''})")
        if execution.run_id is None:
            problems.append((execution.cell, f"{where}: no run was recorded."))
            continue
        run = client.get_run(execution.run_id)
        checked += 1
        first_runs.setdefault((execution.cell, execution.variant), run)
        spec = hands[execution.cell]
        experiment = experiments[execution.variant]
        found = [
            *([] if run.info.status == "FINISHED" else [f"status {run.info.status}"]),
            *([] if run.info.run_name == spec.run_name else [f"run name {run.info.run_name!r}"]),
            *([] if experiment is not None and run.info.experiment_id == experiment.experiment_id
              else ["not in its experiment"]),
            *[f"metric {name!r} missing" for name in spec.metrics if name not in run.data.metrics],
        ]
        for name, steps_variable in spec.series.items():
            steps = len(client.get_metric_history(run.info.run_id, name))
            if steps != namespace[steps_variable]:
                found.append(f"series {name!r} has {steps} steps, not {namespace[steps_variable]}")
        figures = len(client.list_artifacts(run.info.run_id, "figures"))
        if figures != spec.figures:
            found.append(f"{figures} figures, not {spec.figures}")
        datasets = sorted(d.dataset.name for d in run.inputs.dataset_inputs)
        if datasets != sorted(spec.datasets):
            found.append(f"datasets {datasets}, not {sorted(spec.datasets)}")
        models = models_by_run.get(run.info.run_id, [])
        ready = sorted(m.name for m in models if str(m.status) == "READY")
        if ready != sorted(spec.models):
            states = ", ".join(f"{m.name} {m.status}" for m in models) or "none"
            found.append(f"models ready {ready}, not {sorted(spec.models)} (logged: {states})")
        problems.extend((execution.cell, f"{where}: {item}.") for item in found)

    for name in hands:
        tracked, hand = first_runs.get((name, "tracked")), first_runs.get((name, "hand"))
        if tracked is not None and hand is not None:
            problems.extend((name, text) for text in _compare(name, tracked, hand))
    return [text for _, text in problems], {cell for cell, _ in problems}, checked


def _compare(name: str, tracked, hand) -> list[str]:
    """Differences between the params and metrics of a tracked run and its hand-written twin."""
    found = []
    t_params, h_params = tracked.data.params, hand.data.params
    only_tracked = sorted(set(t_params) - set(h_params))
    only_hand = sorted(set(h_params) - set(t_params))
    differ = sorted(k for k in set(t_params) & set(h_params) if t_params[k] != h_params[k])
    if only_tracked or only_hand or differ:
        found.append(f"params of {name!r} differ between tracked and hand-written runs: "
                     f"only tracked {only_tracked}, only hand-written {only_hand}, "
                     f"different values {[(k, t_params[k], h_params[k]) for k in differ]}.")
    for metric in sorted(set(tracked.data.metrics) & set(hand.data.metrics)):
        t_value, h_value = tracked.data.metrics[metric], hand.data.metrics[metric]
        if not math.isclose(t_value, h_value, rel_tol=1e-9):
            found.append(f"metric {metric!r} of {name!r}: tracked {t_value}, hand-written {h_value}.")
    return found


def verify_frameworks(client, executions: list[Execution]) -> tuple[list[str], list[str], int]:
    """Read back every run the framework cells made; return problems, notes (how the variants'
    params differ) and how many runs were checked.
    """
    experiments = [client.get_experiment_by_name(name) for name in
                   (TRACKED_EXPERIMENT, HAND_EXPERIMENT, frameworks.AUTOLOG_EXPERIMENT)]
    models_by_run: dict[str, list] = {}
    for experiment in experiments:
        for model in _logged_models(client, experiment.experiment_id):
            models_by_run.setdefault(model.source_run_id, []).append(model)
    cells = {cell.name: cell for cell in frameworks.CELLS}
    problems, notes, checked = [], [], 0
    first: dict[tuple[str, str], object] = {}
    for execution in executions:
        cell = cells.get(execution.cell)
        if cell is None or execution.variant == "untracked":
            continue
        where = (f"{execution.variant} run of {cell.name!r} "
                 f"({'warm-up' if execution.repeat < 0 else f'repeat {execution.repeat + 1}'})")
        if execution.run_id is None:
            problems.append(f"{where}: no run was recorded.")
            continue
        if execution.variant == "tracked" and execution.store_s is None:
            problems.append(f"{where}: not FINISHED with its models READY {STORE_WAIT_S:.0f} s "
                            "after nbtrack.flush() returned.")
        run = client.get_run(execution.run_id)
        checked += 1
        first.setdefault((cell.name, execution.variant), run)
        problems += [f"{where}: {item}." for item in
                     frameworks.check_run(client, run, cell, execution.variant,
                                          models_by_run.get(run.info.run_id, []))]
    for cell in frameworks.CELLS:
        tracked = first.get((cell.name, "tracked"))
        for variant, label in (("hand", "by hand"), ("autolog", "autolog")):
            other = first.get((cell.name, variant))
            if tracked is not None and other is not None:
                found, wrong = frameworks.differences(tracked, other, label)
                notes += [f"{cell.name}: {text}" for text in found]
                problems += [f"{cell.name}: {text}" for text in wrong]
    return problems, notes, checked


def _logged_models(client, experiment_id: str) -> list:
    models, token = [], None
    while True:
        page = client.search_logged_models(experiment_ids=[experiment_id], max_results=100,
                                           page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return models


# -- messages -------------------------------------------------------------------------------------


def messages(executions: list[Execution]) -> dict[str, list[tuple[str, int]]]:
    """Distinct stderr lines per variant, with how many executions printed each."""
    found: dict[str, Counter] = {variant: Counter() for variant in (*VARIANTS, "autolog")}
    for execution in executions:
        lines = {line.strip() for line in execution.stderr.splitlines() if line.strip()}
        found[execution.variant].update(lines)
    return {variant: counter.most_common() for variant, counter in found.items()}


def _clip(text: str, width: int = 300) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# -- the whole benchmark --------------------------------------------------------------------------


def _environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("nbtrack", "mlflow", "scikit-learn", "ipython", "matplotlib", "pandas", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    git = {}
    try:
        git["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout
        git["dirty"] = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "versions": versions, "git": git}


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def _isolate(store: Path, notebook: Path) -> None:
    """Point MLflow at the temporary store and make the kernel look like Jupyter's."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    journal = store / "journal"  # set after the NBTRACK_ variables are cleared below
    # JupyterLab tells the kernel its notebook this way; nbtrack then logs a snapshot of it.
    os.environ["JPY_SESSION_NAME"] = str(notebook)
    for variable in list(os.environ):
        if variable.startswith("NBTRACK_") or variable in {
            "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "PAPERMILL_INPUT_PATH"
        }:
            del os.environ[variable]
    os.environ["NBTRACK_JOURNAL_DIR"] = str(journal)


def _create_experiments(store: Path) -> None:
    """Create the experiments with their artifacts inside the temporary store."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for name in (TRACKED_EXPERIMENT, HAND_EXPERIMENT, frameworks.AUTOLOG_EXPERIMENT):
        client.create_experiment(name, artifact_location=(store / "artifacts" / name).as_uri())


def run(repeats: int, notebook: Path, warm_up: bool = True) -> tuple[dict, list[str]]:
    """Run the benchmark; return the results and the verification problems.

    ``warm_up``: one untimed pass of every cell and variant first (--quick skips it: CI proves the
    benchmark works and its runs verify; its cold numbers are not the page's).
    """
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_at_start = _load_average()
    notebook = notebook.resolve()
    setup, cells = read_notebook(notebook)
    cells = [*cells, *REFERENCES]
    hands = {hand.run_name: hand for hand in HAND_WRITTEN}
    unknown = [cell.name for cell in cells if cell.name not in hands]
    if unknown:
        raise BenchmarkError(f"no hand-written version for tracked cells {unknown}; add them to "
                             "HAND_WRITTEN.")
    mismatches = [text for cell in cells for text in check_hand_written(cell, hands[cell.name])]
    if mismatches:
        raise BenchmarkError("\n".join(mismatches))

    folder = notebook.parent
    stray = [folder / name for name in ("mlruns", "mlartifacts") if not (folder / name).exists()]
    executions: list[Execution] = []
    blocks: list[dict] = []
    framework_cells = [(TrackedCell(c.name, c.source, c.body),
                        HandWritten(c.name, c.hand, c.metrics, 0, c.models, c.datasets), c)
                       for c in frameworks.CELLS]
    torch_autolog: dict = {}
    previous_cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="nbtrack-bench-") as temporary:
        store = Path(temporary)
        _isolate(store, notebook)
        os.chdir(folder)  # a Jupyter kernel runs in its notebook's folder
        try:
            _create_experiments(store)
            shell = make_shell()
            for source in [*setup, "%load_ext nbtrack", UNTRACKED_SETUP, TRACKED_SETUP, HAND_SETUP,
                           frameworks.SETUP]:
                run_cell(shell, source)
            print(f"notebook: {notebook} ({len(cells) - len(REFERENCES)} tracked cells, "
                  f"{len(setup)} setup cells), then the reference cells "
                  f"{', '.join(c.name for c in REFERENCES)} and the framework cells "
                  f"{', '.join(c.name for c in frameworks.CELLS)}")
            print(f"{'warm-up, then ' if warm_up else 'no warm-up (quick), '}{repeats} repeat(s) "
                  f"of {len(VARIANTS)} variants per cell ...", flush=True)
            first = -1 if warm_up else 0
            for repeat in range(first, repeats):  # -1: the warm-up, not counted
                for cell in cells:
                    times = REFERENCE_RUNS if cell in REFERENCES else 1
                    for _ in range(times):
                        for variant in variant_order(max(repeat, 0)):
                            executions.append(execute(shell, cell, hands[cell.name], variant,
                                                      repeat))
                    if cell in REFERENCES:
                        for variant in variant_order(max(repeat, 0)):
                            done, block = execute_back_to_back(
                                shell, cell, hands[cell.name], variant, repeat, REFERENCE_RUNS)
                            executions += done
                            blocks.append(block)
                for cell, hand, framework in framework_cells:
                    for variant in framework_variant_order(max(repeat, 0)):
                        if variant != "autolog":
                            executions.append(execute(shell, cell, hand, variant, repeat))
                        elif framework.autolog is not None:
                            executions.append(execute_autolog(shell, framework, repeat))
                if repeat == first:
                    torch_autolog = probe_torch_autolog(shell)
                label = "warm-up" if repeat < 0 else f"repeat {repeat + 1}/{repeats}"
                print(f"  {label} done ({time.perf_counter() - started:.0f} s)", flush=True)

            from mlflow import MlflowClient

            import nbtrack

            flush = getattr(nbtrack, "flush", None)  # background writing: wait for the store
            if flush is not None:
                flush()
            framework_names = {c.name for c in frameworks.CELLS}
            problems, flagged, checked = verify(
                MlflowClient(), [e for e in executions if e.cell not in framework_names], hands,
                shell.user_ns)
            more, framework_notes, more_checked = verify_frameworks(MlflowClient(), executions)
            problems += more
            checked += more_checked
            flagged |= {c.name for c in frameworks.CELLS if any(c.name in p for p in more)}
        finally:
            os.chdir(previous_cwd)
    for path in stray:
        if path.exists():
            problems.append(f"MLflow wrote into {path} during the benchmark (removed).")
            shutil.rmtree(path)

    rows = summarize(executions, [*cells, *(cell for cell, _, _ in framework_cells)])
    model_cells = [cell.name for cell in cells if hands[cell.name].models] + [
        cell.name for cell in frameworks.CELLS]
    results = {
        "benchmark": "cell_overhead",
        "started_at": started_at,
        "total_seconds": time.perf_counter() - started,
        "repeats": repeats,
        "notebook": {"path": str(notebook),
                     "sha256": hashlib.sha256(notebook.read_bytes()).hexdigest()},
        "environment": _environment(),
        # Other processes on the machine add noise; the 1-minute load average says how busy it was.
        "load_average_1min": {"start": load_at_start, "end": _load_average()},
        "cells": rows,
        "back_to_back": summarize_back_to_back(blocks),
        "back_to_back_blocks": blocks,
        "frameworks": {"cells": summarize_frameworks(executions, torch_autolog),
                       "torch_autolog": torch_autolog, "notes": framework_notes},
        "in_store": summarize_in_store(executions, model_cells),
        "verification": {"ok": not problems, "runs_checked": checked, "problems": problems,
                         "flagged_cells": sorted(flagged)},
        "stderr": {variant: [{"line": line, "executions": count} for line, count in lines]
                   for variant, lines in messages(executions).items()},
        "executions": [{"cell": e.cell, "variant": e.variant, "repeat": e.repeat,
                        "seconds": e.seconds, "run_id": e.run_id, "back_to_back": e.back_to_back,
                        "store_s": e.store_s}
                       for e in executions],
    }
    return results, problems


def report(results: dict) -> str:
    """The printed report: the table, what the cells said on stderr, and the verification."""
    verification = results["verification"]
    flagged = set(verification["flagged_cells"])
    load = {key: "n/a" if value is None else f"{value:.1f}"
            for key, value in results["load_average_1min"].items()}
    lines = [
        "",
        f"%%track overhead per cell: {results['repeats']} repeat(s), after 1 warm-up; "
        "times in ms (median and p95 of wall time)",
        "+tracked = tracked - untracked, +hand = hand - untracked (medians); "
        "the last row sums the cells' medians and p95s",
        f"machine: {results['environment']['cpu_count']} CPUs, 1-minute load average "
        f"{load['start']} at start, {load['end']} at end",
        "",
        format_table(results["cells"], flagged),
        "",
        f"The reference cells {REFERENCE_RUNS} times in a row, ms per cell (tracked: until the "
        "store has every run, nbtrack.flush() included):",
        format_back_to_back(results["back_to_back"]),
    ]
    framework = results["frameworks"]
    lines += [
        "",
        "Framework cells, ms: %%track vs the same content by hand (mlflow.<flavor>.log_model, "
        "log_params, log_metric) vs mlflow.<flavor>.autolog() (+ the cell's own score):",
        format_frameworks(framework["cells"]),
    ]
    lines += [f"  {row['cell']}: {row['autolog_note']}" for row in framework["cells"]
              if row.get("autolog_note")]
    probe = framework["torch_autolog"]
    if probe.get("recorded") is not None:
        recorded = probe["recorded"]
        lines.append(f"  (mlflow.pytorch.autolog() on for one untimed run of torch-mlp recorded "
                     f"{len(recorded['params'])} params, {len(recorded['metrics'])} metrics, "
                     f"{len(recorded['models'])} models)")
    elif probe.get("error"):
        lines.append(f"  (mlflow.pytorch.autolog() failed: {probe['error']})")
    lines += [f"  content: {note}" for note in framework["notes"]]
    lines += [
        "",
        "Until the model run is in the store, ms (tracked: cell start to nbtrack.flush() returning "
        "with the run FINISHED and its models READY; by hand the run is in the store when the "
        "cell returns):",
        format_in_store(results["in_store"]),
    ]
    if flagged:
        lines.append("(!) = a run of this cell failed verification; see below.")
    for variant in (*VARIANTS, "autolog"):
        seen = results["stderr"][variant]
        # nbtrack's own messages are the point; the others are MLflow's and sklearn's warnings.
        shown = seen if variant == "tracked" else seen[:STDERR_LINES_SHOWN]
        if seen:
            lines += ["", f"stderr of the {variant} cells (distinct lines, x executions):"]
            lines += [f"  [{item['executions']}x] {_clip(item['line'])}" for item in shown]
        if len(shown) < len(seen):
            lines.append(f"  ... {len(seen) - len(shown)} more distinct lines in the JSON results.")
    lines.append("")
    if verification["ok"]:
        lines.append(f"verification: OK, {verification['runs_checked']} runs read back from the "
                     "store with the expected params, metrics, series, figures, models and datasets.")
    else:
        lines.append(f"verification FAILED ({verification['runs_checked']} runs read back):")
        lines += [f"  - {_clip(problem, 400)}" for problem in verification["problems"]]
    lines.append(f"total wall time: {results['total_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cell_overhead",
        description="Per-cell overhead of %%track: untracked vs tracked vs hand-written MLflow.",
    )
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed repeats per cell and variant (default {DEFAULT_REPEATS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_REPEATS} repeat and no warm-up pass, for CI: proves it works, "
                        "cold numbers (--repeats wins if both are given)")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK, help="notebook to benchmark")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the JSON (default: results folder/cell_overhead.json)")
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (
        QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    if repeats < 1:
        parser.error("--repeats takes a positive number.")
    if not args.notebook.exists():
        parser.error(f"notebook {args.notebook} not found.")

    output = args.output or results_dir() / "cell_overhead.json"  # before run() clears NBTRACK_*
    try:
        results, problems = run(repeats, args.notebook, warm_up=not args.quick)
    except BenchmarkError as error:
        print(f"benchmark could not run: {error}", file=sys.stderr)
        return 2
    results["quick"] = args.quick
    print(report(results))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results: {output}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
