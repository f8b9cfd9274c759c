"""Shared fixtures and helpers for tests/unit and tests/e2e: a temporary MLflow store per test, an
in-process IPython shell with nbtrack loaded, a real kernel through nbclient, notebooks written to
disk and the ``nbtrack`` command line."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

# The store matrix: local SQLite, mlflow server on SQLite, the README's team server on PostgreSQL.
from servers import any_store, http_sqlite_server, postgres_cluster, team_server  # noqa: F401

os.environ.setdefault("MPLBACKEND", "Agg")
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHOWCASE = REPO / "notebooks" / "train_v2_final.ipynb"
NOTEBOOKS = TESTS / "notebooks"  # the handbook notebooks (tests/notebooks/make_notebooks.py)


def write_notebook(path: Path, cells: list[str], parameters: str | None = None) -> Path:
    """Write a python3 notebook of code cells ``cells`` (no outputs), after a papermill
    ``parameters`` cell holding ``parameters`` when given; return ``path``."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                       "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    notebook.cells = []
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        notebook.cells.append(cell)
    notebook.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def own_metrics(metrics: dict) -> dict:
    """A run's metrics without the machine's (``system/...``, sampled while every cell runs)."""
    return {k: v for k, v in metrics.items() if not k.startswith("system/")}


def cell_runs(runs: list) -> list:
    """The runs tracked cells made, without a sweep's parent run (tag ``nbtrack.sweep_parent``)."""
    return [run for run in runs if "nbtrack.sweep_parent" not in run.data.tags]


def nbtrack_cli(*args: str, cwd=None, env: dict[str, str] | None = None, timeout: float = 900,
                check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m nbtrack ARGS`` in ``cwd`` (environment: this one plus ``env``); with
    ``check``, assert it exited 0."""
    done = subprocess.run([sys.executable, "-m", "nbtrack", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="session")
def empty_store_file(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made and nothing in it, copied for each test's store
    (making the tables takes seconds)."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow resolves the Default experiment's ./mlruns here
        MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store_file):
    """A fresh SQLite MLflow store in a temporary folder that is also the working directory."""
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    database = tmp_path / "mlflow.db"
    shutil.copy(empty_store_file, database)
    # The Default experiment's artifacts go where a store made here would put them: ./mlruns.
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?) "
                   "WHERE experiment_id = 0", (str(empty_store_file.parent), str(work)))
    uri = f"sqlite:///{database}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("NBTRACK_JOURNAL_DIR", str(tmp_path / "journal"))
    monkeypatch.setenv("NBTRACK_CACHE_DIR", str(tmp_path / "cache"))  # the run index's files
    for variable in ("JPY_SESSION_NAME", "PAPERMILL_INPUT_PATH", "NBTRACK_BATCH"):
        monkeypatch.delenv(variable, raising=False)
    _forget_mlflow_tracking_uri()
    yield uri
    _forget_mlflow_tracking_uri()


def _forget_mlflow_tracking_uri() -> None:
    """Let MLflow's fluent API follow MLFLOW_TRACKING_URI again: a URI set in-process by an earlier
    test (mlflow.set_tracking_uri) would send this test's fluent calls to that test's store."""
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)


@pytest.fixture
def client(store):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store)


class Shell:
    """A real InteractiveShell with nbtrack loaded, and helpers to run cells and read runs."""

    def __init__(self, ip, client):
        self.ip = ip
        self.client = client

    def run(self, source: str, **kwargs):
        kwargs.setdefault("store_history", True)
        return self.ip.run_cell(source, **kwargs)

    def ok(self, source: str, **kwargs):
        result = self.run(source, **kwargs)
        assert result.success, result.error_in_exec or result.error_before_exec
        return result

    def runs(self, experiment: str | None = None):
        """All runs of the experiment (default: the only one), oldest first."""
        import nbtrack

        nbtrack.flush()  # runs reach the store from a background writer
        if experiment is None:
            experiments = [e for e in self.client.search_experiments() if e.name != "Default"]
            assert len(experiments) == 1, [e.name for e in experiments]
            experiment_id = experiments[0].experiment_id
        else:
            experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        return self.client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])

    def last(self):
        import nbtrack

        return self.client.get_run(nbtrack.last_run())

    def artifact_paths(self, run_id: str, path: str | None = None) -> list[str]:
        found = []
        for item in self.client.list_artifacts(run_id, path):
            if item.is_dir:
                found += self.artifact_paths(run_id, item.path)
            else:
                found.append(item.path)
        return found

    def artifact_text(self, run_id: str, path: str) -> str:
        local = self.client.download_artifacts(run_id, path)
        return Path(local).read_text()


@pytest.fixture
def shell(store, client):
    """An in-process IPython shell with ``%load_ext nbtrack`` done, on the test's store."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    InteractiveShell.clear_instance()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=config)
    ip.run_cell("%load_ext nbtrack")
    yield Shell(ip, client)
    ip.run_cell("%unload_ext nbtrack")
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    # IPython registers each shell's atexit_operations (a reset with a full gc.collect): with a
    # shell per test that keeps every test's namespace alive and makes pytest's exit take minutes.
    atexit.unregister(ip.atexit_operations)
    ip.history_manager.end_session()
    InteractiveShell.clear_instance()
    sys.modules.get("matplotlib.pyplot") and sys.modules["matplotlib.pyplot"].close("all")


def run_notebook(path: Path, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300,
                 allow_errors: bool = False):
    """Execute a notebook in a real kernel (nbclient); return the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    # Kernels draw figures the way Jupyter does (inline), not with the tests' own Agg backend.
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # Each tracked cell waits for its run to reach the store, so the test can read the store as
    # soon as the kernel is gone (a kernel manager kills a kernel that takes over 5 s to exit;
    # runs it had not written by then would wait in its journal).
    os.environ.setdefault("NBTRACK_WAIT_FOR_STORE", "1")
    os.environ.update(env or {})
    try:
        NotebookClient(
            notebook, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
            resources={"metadata": {"path": str(cwd)}},
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return notebook
