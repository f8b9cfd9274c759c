"""Executing notebooks headless, tracked like interactive ones (papermill drives nbclient)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from nbtrack.errors import NotebookError


def absolute_tracking_uri() -> str:
    """MLflow's tracking URI with a relative SQLite path made absolute.

    The kernel runs in the notebook's folder; a relative ``sqlite:///mlflow.db`` would otherwise
    open a different store there than the one this process reads.
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri


@contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute(notebook: Path, output: Path, parameters: dict | None = None,
            experiment: str | None = None, progress: bool = True) -> Path:
    """Execute ``notebook`` into ``output`` with nbtrack's lineage variables set for the kernel.

    The kernel gets ``JPY_SESSION_NAME`` (so runs name their notebook), ``NBTRACK_BATCH`` (runs are
    tagged as batch executions), an absolute ``MLFLOW_TRACKING_URI`` and, when given,
    ``MLFLOW_EXPERIMENT_NAME``. Raises ``papermill.PapermillExecutionError`` when a cell fails.
    """
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise NotebookError(f"notebook {str(notebook)!r} not found.")
    env = {
        "JPY_SESSION_NAME": str(notebook.resolve()),
        "NBTRACK_BATCH": "nbtrack run",
        "MLFLOW_TRACKING_URI": absolute_tracking_uri(),
    }
    if experiment:
        env["MLFLOW_EXPERIMENT_NAME"] = experiment
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with _environment(env):
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters or {}, kernel_name="python3",
            cwd=str(notebook.resolve().parent), progress_bar=progress,
        )
    return output
