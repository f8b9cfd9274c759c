"""Settings: traitlets for ``%config Nbtrack.x = ...`` and ``ipython_config.py``, plus MLflow's
environment variables, which always keep their meaning.

Example::

    %config Nbtrack.figures = False       # stop capturing figures in this kernel
    c.Nbtrack.experiment = "churn"        # in ipython_config.py
"""

from __future__ import annotations

import os
from pathlib import Path

from traitlets import Bool, Float, Int, Unicode
from traitlets.config import Configurable


class Nbtrack(Configurable):
    """What ``%%track`` captures by default, and where it writes."""

    experiment = Unicode(
        "",
        help="Experiment for tracked cells; empty: MLFLOW_EXPERIMENT_NAME, else the project's name.",
    ).tag(config=True)
    figures = Bool(True, help="Log matplotlib figures the cell shows as PNG artifacts.").tag(
        config=True
    )
    models = Bool(True, help="Log fitted scikit-learn estimators with MLflow's sklearn flavor.").tag(
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
    for candidate in (option, configured, os.environ.get("MLFLOW_EXPERIMENT_NAME")):
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
