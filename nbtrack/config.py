"""Settings: traitlets for ``%config Nbtrack.x = ...`` and ``ipython_config.py``, plus MLflow's
environment variables, which always keep their meaning.

Example::

    %config Nbtrack.figures = False       # stop capturing figures in this kernel
    c.Nbtrack.experiment = "churn"        # in ipython_config.py
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from traitlets import Bool, Float, Int, Unicode
from traitlets.config import Configurable


class Nbtrack(Configurable):
    """What ``%%track`` captures by default, and where it writes."""

    experiment = Unicode(
        "",
        help="Experiment for tracked cells; empty: MLFLOW_EXPERIMENT_NAME, else the project's name.",
    ).tag(config=True)
    live = Bool(
        None, allow_none=True,
        help="Draw the series a tracked cell logs under it while it runs. None (default): yes, "
             "except in batch executions (nbtrack run, papermill, nbconvert), where nobody watches.",
    ).tag(config=True)
    system_metrics = Bool(
        True, help="Sample CPU, memory (and NVIDIA GPUs) while a tracked cell runs, as system/ "
                   "metric series."
    ).tag(config=True)
    figures = Bool(True, help="Log matplotlib figures the cell shows as PNG artifacts.").tag(
        config=True
    )
    models = Bool(True, help="Log trained models with their framework's MLflow flavor.").tag(
        config=True
    )
    datasets = Bool(True, help="Log DataFrames and arrays the cell uses as dataset inputs.").tag(
        config=True
    )
    history = Bool(True, help="Log the kernel's execution history up to the tracked cell.").tag(
        config=True
    )
    notebook_snapshot = Bool(True, help="Log a copy of the .ipynb when its path is known.").tag(
        config=True
    )
    summary = Bool(True, help="Print one summary line after each tracked cell.").tag(config=True)
    background = Bool(
        True,
        help="Write runs to the store on a background thread, so cells do not wait for it. "
        "Batch executions and --register cells wait whatever this says.",
    ).tag(config=True)
    wait_seconds = Float(
        120.0, help="How long a cell that waits for the store (batch, --register) waits at most."
    ).tag(config=True)
    drain_seconds = Float(
        10.0, help="How long a kernel that shuts down waits for queued runs to reach the store."
    ).tag(config=True)
    max_collection_items = Int(
        20, help="Lists, tuples and dicts longer than this are not recorded as params."
    ).tag(config=True)


def project_name(start: Path) -> str:
    """Name the project a notebook belongs to: its git repository's root folder, else its folder."""
    root = git_root(start)
    return (root or start).resolve().name or "Default"


def git_root(start: Path) -> Path | None:
    """Return the root of the git repository holding ``start``, or None."""
    for folder in [start.resolve(), *start.resolve().parents]:
        if (folder / ".git").exists():
            return folder
    return None


def resolve_experiment(option: str | None, configured: str, notebook_dir: Path) -> str:
    """Pick the experiment: ``-e`` first, then ``%track_config`` / traitlet, then
    ``MLFLOW_EXPERIMENT_NAME``, then the project's name.
    """
    for candidate in (option, configured, os.environ.get(EXPERIMENT_NAME_ENV)):
        if candidate:
            return candidate
    return project_name(notebook_dir)


# The run index's files (nbtrack.store.index), and how often it re-reads every run.
CACHE_ENV = "NBTRACK_CACHE_DIR"
RECONCILE_ENV = "NBTRACK_INDEX_RECONCILE_SECONDS"
DEFAULT_RECONCILE_SECONDS = 600.0


def cache_dir() -> Path:
    """Folder of the index files: ``$NBTRACK_CACHE_DIR``, else the user's cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nbtrack"


# Every environment variable nbtrack reads or sets: its own, and MLflow's it honours.
EXECUTION_ID_ENV = "NBTRACK_EXECUTION_ID"
BATCH_ENV = "NBTRACK_BATCH"
SWEEP_ID_ENV = "NBTRACK_SWEEP_ID"
# The Optuna trial an execution of `nbtrack run --search` is (its runs are tagged with it).
TRIAL_ENV = "NBTRACK_TRIAL"
# The sweep's parent run: an execution's runs are its children (mlflow.parentRunId).
PARENT_RUN_ENV = "NBTRACK_PARENT_RUN_ID"
# `nbtrack run --search --prune`: the folder a trial's kernel reports its objective's points to
# (and finds the search's word to stop in), and the objective's name (nbtrack/capture/pruning.py).
PRUNE_FOLDER_ENV = "NBTRACK_PRUNE_FOLDER"
OBJECTIVE_ENV = "NBTRACK_OBJECTIVE"
PARAMETERS_ENV = "NBTRACK_PARAMETERS"
WAIT_FOR_STORE_ENV = "NBTRACK_WAIT_FOR_STORE"
JOURNAL_DIR_ENV = "NBTRACK_JOURNAL_DIR"
PUSH_WAIT_ENV = "NBTRACK_PUSH_WAIT_SECONDS"  # how long nbtrack push waits for a silent target
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_NAME_ENV = "MLFLOW_EXPERIMENT_NAME"
TRACKING_USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
ARTIFACTS_PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def journal_root() -> Path:
    """The journal folder: ``$NBTRACK_JOURNAL_DIR``, else ``~/.local/state/nbtrack/journal``."""
    configured = os.environ.get(JOURNAL_DIR_ENV)
    if configured:
        return Path(configured)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "nbtrack" / "journal"


def batch_runner(environ: Mapping[str, str] = os.environ) -> str | None:
    """Which headless runner executes this kernel: ``nbtrack run``, ``nbconvert``, ``papermill``
    (None when a person is at the notebook).

    ``nbtrack run`` says so in ``NBTRACK_BATCH``; for the others, the kernel's parent process
    (``JPY_PARENT_PID``, set by jupyter_client) is looked at, where /proc shows it.
    """
    if environ.get(BATCH_ENV):
        return environ[BATCH_ENV]
    parent = environ.get("JPY_PARENT_PID")
    if not parent or not parent.isdigit():
        return None
    try:
        command = Path(f"/proc/{parent}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    for runner in ("papermill", "nbconvert", "nbclient"):
        if runner in command:
            return runner
    return None
