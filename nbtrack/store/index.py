"""The run index: a summary of every run of an experiment, so the board ranks 10,000 runs at once.

``mlflow.search_runs`` reads every run's params, metrics and tags through the store on each call
(seconds at 10,000 runs on SQLite), and ordering by a metric costs as much for a first page of 50.
The index keeps one summary a run (its info, latest metric values, params, tags and dataset
inputs) in memory and in a small SQLite file of nbtrack's own, and asks MLflow only what changed.
MLflow stays the only source of truth: the index is read from MLflow through ``MlflowClient``
alone, and deleting the file loses nothing.

Where the file lives: ``$NBTRACK_CACHE_DIR`` (default ``$XDG_CACHE_HOME/nbtrack``, else
``~/.cache/nbtrack``), one ``runs-<hash>.sqlite`` per tracking URI (relative SQLite paths made
absolute) and experiment id.

How it stays current (:meth:`RunIndex.refresh`):

- runs that started since the last look, with a margin for clock skew between processes
  (``attributes.start_time >= ...``), and runs that ended since (``attributes.end_time``);
- every run the index holds as RUNNING that started in the last 24 hours, read again (live
  metrics);
- the experiment's deleted runs (``ViewType.DELETED_ONLY``), dropped from the ranking; runs the
  index holds as deleted that are no longer, read again (restored);
- a full reconcile, reading every run again, when the file is missing, unreadable, of another
  schema version, or older than ``$NBTRACK_INDEX_RECONCILE_SECONDS`` (default 600). Changes the
  steps above cannot see (a finished run renamed or re-tagged in the MLflow UI, a run created
  with a start time in the past) show within that bound, or at once with ``refresh(full=True)``.

Ranking and filtering (:meth:`RunIndex.search`) evaluate MLflow's filter syntax with MLflow's own
in-memory evaluator (``SearchUtils.filter``, which MLflow's file store uses), on summaries ordered
as the SQL store orders ``search_runs`` (start time, newest first, then run id).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from nbtrack.config import DEFAULT_RECONCILE_SECONDS, RECONCILE_ENV, cache_dir
from nbtrack.store.kernel_state import absolute_tracking_uri
from nbtrack.store.summaries import RUNNING, RunSummary, natural_order

SCHEMA_VERSION = 1
# Runs other processes start are looked for from this long before the last look: their clocks
# (another machine's, on a team server) may lag ours.
CLOCK_SKEW_MS = 120_000
LIVE_RUN_MS = 24 * 3600 * 1000  # running runs younger than this are read again at each look
PAGE_SIZE = 10_000  # runs per search_runs page, as mlflow.search_runs reads them
IDS_PER_QUERY = 100  # run ids per "attributes.run_id IN (...)" filter

def index_path(tracking_uri: str, experiment_id: str, folder: Path | None = None) -> Path:
    """The index file of one experiment of one store."""
    key = hashlib.sha256(f"{absolute_tracking_uri(tracking_uri)}\0{experiment_id}".encode()).hexdigest()
    return (folder or cache_dir()) / f"runs-{key[:20]}.sqlite"


# -- the summaries: what MLflow's in-memory filter reads of a Run -------------------------------


class IndexUnusable(Exception):
    """The index file cannot be used as it is (corrupt, other schema, other store): rebuild it."""


# Runs this process has just written. A run written late, with its original times (a journal
# replayed after the store was away), starts and ends before the incremental read's window, so
# the next incremental read of its experiment looks these up by id.
_WRITTEN: dict[str, set[str]] = {}
_WRITTEN_LOCK = threading.Lock()


def note_written(tracking_uri: str, run_id: str) -> None:
    """Tell the indexes of this process that ``run_id`` was written to ``tracking_uri``."""
    with _WRITTEN_LOCK:
        _WRITTEN.setdefault(absolute_tracking_uri(tracking_uri), set()).add(run_id)


class RunIndex:
    """The summaries of one experiment's runs, kept current from MLflow.

    Parameters
    ----------
    tracking_uri
        The MLflow store (relative SQLite paths are made absolute).
    experiment_id
        The experiment whose runs are indexed.
    folder
        Where the index file goes; default :func:`cache_dir`.
    reconcile_seconds
        Age after which :meth:`refresh` reads every run again; default
        ``$NBTRACK_INDEX_RECONCILE_SECONDS`` or 600.

    Examples
    --------
    >>> index = RunIndex.shared("sqlite:///mlflow.db", "1")  # doctest: +SKIP
    >>> index.refresh()  # doctest: +SKIP
    >>> index.search("metrics.val_auc > 0.9", order_by=["metrics.val_auc DESC"])[:50]  # doctest: +SKIP

    """

    _shared: dict[tuple[str, str, str], RunIndex] = {}
    _shared_lock = threading.Lock()

    def __init__(self, tracking_uri: str, experiment_id: str, folder: Path | None = None,
                 reconcile_seconds: float | None = None):
        self.tracking_uri = absolute_tracking_uri(tracking_uri)
        self.experiment_id = str(experiment_id)
        self.path = index_path(self.tracking_uri, self.experiment_id, folder)
        if reconcile_seconds is None:
            reconcile_seconds = float(os.environ.get(RECONCILE_ENV) or DEFAULT_RECONCILE_SECONDS)
        self.reconcile_seconds = reconcile_seconds
        self._runs: dict[str, RunSummary] = {}
        self._ordered: list[RunSummary] | None = None  # active runs in natural order
        self._looked_at: int | None = None  # ms, wall clock when the last refresh began
        self._reconciled_at: int | None = None
        self._loaded = False
        self._lock = threading.RLock()
        self._background: threading.Thread | None = None
        self.last_refresh: dict = {}

    @classmethod
    def shared(cls, tracking_uri: str, experiment_id: str) -> RunIndex:
        """The process's index of this experiment, created on first use.

        One copy a process: the board, ``nbtrack.leaderboard()`` and the refresh after each
        tracked cell then share the summaries in memory instead of each reloading the file.
        """
        key = (absolute_tracking_uri(tracking_uri), str(experiment_id), str(cache_dir()))
        with cls._shared_lock:
            index = cls._shared.get(key)
            if index is None:
                index = cls._shared[key] = cls(tracking_uri, experiment_id)
            return index

    # -- reading ------------------------------------------------------------------------------

    def summaries(self) -> list[RunSummary]:
        """Every active (not deleted) run, in ``search_runs``'s natural order."""
        with self._lock:
            if self._ordered is None:
                self._ordered = sorted((s for s in self._runs.values() if not s.deleted),
                                       key=natural_order)
            return list(self._ordered)

    def search(self, filter_string: str | None = None,
               order_by: list[str] | None = None) -> list[RunSummary]:
        """The active runs ``search_runs(filter_string=..., order_by=...)`` would return, in its
        order. A filter MLflow cannot read raises ``MlflowException`` as ``search_runs`` does.
        """
        from mlflow.utils.search_utils import SearchUtils

        runs = self.summaries()
        if filter_string:
            runs = SearchUtils.filter(runs, filter_string)
        if order_by:
            runs = SearchUtils.sort(runs, order_by)
        return runs

    def __len__(self) -> int:
        return len(self.summaries())

    # -- keeping current ----------------------------------------------------------------------

    def reconcile_due(self) -> bool:
        """True when the last full read of the experiment is older than ``reconcile_seconds``."""
        if self._reconciled_at is None:
            return True
        return _now_ms() - self._reconciled_at >= self.reconcile_seconds * 1000

    def refresh(self, full: bool | None = None, background: bool = False) -> dict:
        """Bring the index up to date with MLflow; return what changed.

        Parameters
        ----------
        full
            True: read every run again. False: only what changed since the last look. None
            (default): a full read when one is due (no usable file, or older than
            ``reconcile_seconds``), else only the changes.
        background
            With ``full=None``, a due full read of an index that already holds runs happens in a
            background thread (this call returns after the quick look for changes); the next
            refresh after it ends sees its result.

        Returns
        -------
        dict
            ``{"mode": "full" | "changes", "read": runs read from MLflow, "changed": runs added
            or updated, "removed": runs deleted or gone, "seconds": ...}``.

        """
        started = time.perf_counter()
        with self._lock:
            if not self._loaded:
                self._load()
            if full is None:
                full = self.reconcile_due()
                if full and background and self._runs:
                    self._reconcile_in_background()
                    full = False
            stats = self._reconcile() if full else self._changes()
            stats["seconds"] = time.perf_counter() - started
            self.last_refresh = stats
            return stats

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a background full read to end (tests, benchmarks)."""
        thread = self._background
        if thread is not None:
            thread.join(timeout)

    def _reconcile_in_background(self) -> None:
        if self._background is not None and self._background.is_alive():
            return

        from nbtrack.threads import start, with_imports

        def work():
            try:
                fetched, looked_at = with_imports(self._read_all)
            except Exception as error:  # a cache: the next refresh tries again, and says so
                from nbtrack import display

                display.warn(f"could not re-read the runs for the index: {error}")
                return
            with self._lock:
                self._replace_all(fetched, looked_at)

        self._background = start("run-index", work)

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def _search(self, filter_string: str = "", view=None) -> list:
        from mlflow.entities import ViewType

        client = self._client()
        found, token = [], None
        while True:
            page = client.search_runs([self.experiment_id], filter_string=filter_string,
                                      run_view_type=view or ViewType.ACTIVE_ONLY,
                                      max_results=PAGE_SIZE, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def _by_ids(self, run_ids: list[str]) -> list:
        from mlflow.entities import ViewType

        found = []
        for start in range(0, len(run_ids), IDS_PER_QUERY):
            chunk = run_ids[start:start + IDS_PER_QUERY]
            quoted = ", ".join(f"'{run_id}'" for run_id in chunk)
            found += self._search(f"attributes.run_id IN ({quoted})", view=ViewType.ALL)
        return found

    def _read_all(self) -> tuple[list[RunSummary], int]:
        from mlflow.entities import ViewType

        looked_at = _now_ms()
        return [RunSummary.from_run(run) for run in self._search(view=ViewType.ALL)], looked_at

    def _reconcile(self) -> dict:
        fetched, looked_at = self._read_all()
        before = set(self._runs)
        self._replace_all(fetched, looked_at)
        return {"mode": "full", "read": len(fetched), "changed": len(fetched),
                "removed": len(before - set(self._runs))}

    def _replace_all(self, fetched: list[RunSummary], looked_at: int) -> None:
        self._runs = {s.run_id: s for s in fetched}
        self._ordered = None
        self._looked_at = looked_at
        self._reconciled_at = looked_at
        self._save(fetched, replace=True)

    def _changes(self) -> dict:
        from mlflow.entities import ViewType

        looked_at = _now_ms()
        since = (self._looked_at or 0) - CLOCK_SKEW_MS
        read = self._search(f"attributes.start_time >= {since}")
        read += self._search(f"attributes.end_time >= {since}")
        # Live metrics of running runs. Runs left RUNNING for over a day are mostly abandoned
        # (a killed kernel): they wait for the full read, or show when they end (end_time).
        live_since = looked_at - LIVE_RUN_MS
        running = [s.run_id for s in self._runs.values() if s.info.status == RUNNING
                   and not s.deleted and (s.info.start_time or 0) >= live_since]
        deleted_now = {run.info.run_id: run for run in self._search(view=ViewType.DELETED_ONLY)}
        held_deleted = [s.run_id for s in self._runs.values() if s.deleted]
        restored = [run_id for run_id in held_deleted if run_id not in deleted_now]
        with _WRITTEN_LOCK:
            noted = sorted(_WRITTEN.get(self.tracking_uri, ()))
        by_id = self._by_ids(running + restored + noted)
        read += by_id
        if noted:  # those of other experiments wait for those experiments' indexes
            with _WRITTEN_LOCK:
                _WRITTEN.get(self.tracking_uri, set()).difference_update(
                    run.info.run_id for run in by_id)
        read += [run for run_id, run in deleted_now.items()
                 if run_id not in self._runs or not self._runs[run_id].deleted]
        changed = []
        for run in read:
            summary = RunSummary.from_run(run)
            held = self._runs.get(summary.run_id)
            if held is None or not held.same_as(summary):
                self._runs[summary.run_id] = summary
                changed.append(summary)
        found = {run.info.run_id for run in read}
        # Held as deleted, neither deleted nor found now: removed for good (mlflow gc).
        gone = [run_id for run_id in restored if run_id not in found]
        for run_id in gone:
            del self._runs[run_id]
        if changed or gone:
            self._ordered = None
        self._looked_at = looked_at
        if changed or gone:
            self._save(changed, removed=gone)
        else:
            self._save_meta()
        return {"mode": "changes", "read": len(read), "changed": len(changed),
                "removed": len(gone) + sum(1 for s in changed if s.deleted)}

    # -- the file ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30)
        connection.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        connection.execute("CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, "
                           "summary TEXT NOT NULL)")
        return connection

    def _load(self) -> None:
        """Read the file into memory; an unusable file is discarded (a full read follows)."""
        self._loaded = True
        if not self.path.exists():
            return
        try:
            with _closing(self._connect()) as connection:
                meta = dict(connection.execute("SELECT key, value FROM meta"))
                expected = {"schema_version": str(SCHEMA_VERSION),
                            "tracking_uri": self.tracking_uri,
                            "experiment_id": self.experiment_id}
                if any(meta.get(key) != value for key, value in expected.items()):
                    raise IndexUnusable(f"made for {meta}")
                texts = [text for (text,) in connection.execute("SELECT summary FROM runs")]
                # One document: the decoder then shares the key strings ("val_auc", ...) of
                # every run, where a loads() a run would keep a copy of each in each run.
                records = json.loads("[" + ",".join(texts) + "]")
                del texts
                self._runs = {r["info"]["run_id"]: RunSummary(r) for r in records}
                self._ordered = None
                self._looked_at = int(meta["looked_at"]) if meta.get("looked_at") else None
                self._reconciled_at = (int(meta["reconciled_at"]) if meta.get("reconciled_at")
                                       else None)
        except (sqlite3.DatabaseError, IndexUnusable, ValueError, KeyError, TypeError):
            # Corrupt, another schema, or another store's: start again from MLflow.
            self._runs, self._looked_at, self._reconciled_at = {}, None, None
            self._ordered = None
            self._discard_file()

    def _discard_file(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _save(self, summaries: list[RunSummary], replace: bool = False,
              removed: list[str] = ()) -> None:
        try:
            self._write(summaries, replace, removed)
        except sqlite3.DatabaseError:
            # Broken under us (another process, a full disk): one more go on a fresh file.
            self._discard_file()
            try:
                self._write(list(self._runs.values()), True, ())
            except (sqlite3.DatabaseError, OSError) as error:
                self._warn_unsaved(error)
        except OSError as error:
            self._warn_unsaved(error)

    def _warn_unsaved(self, error) -> None:
        from nbtrack import display

        display.warn(f"the run index could not be saved to {self.path} ({error}); it is kept in "
                     f"memory only, and the next process reads the runs from MLflow again.")

    def _write(self, summaries, replace: bool, removed) -> None:
        with _closing(self._connect()) as connection, connection:
            if replace:
                connection.execute("DELETE FROM runs")
            connection.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?)",
                                   [(s.run_id, s.to_json()) for s in summaries])
            connection.executemany("DELETE FROM runs WHERE run_id = ?",
                                   [(run_id,) for run_id in removed])
            self._write_meta(connection)

    def _save_meta(self) -> None:
        try:
            with _closing(self._connect()) as connection, connection:
                self._write_meta(connection)
        except (sqlite3.DatabaseError, OSError) as error:
            self._warn_unsaved(error)

    def _write_meta(self, connection) -> None:
        meta = {"schema_version": SCHEMA_VERSION, "tracking_uri": self.tracking_uri,
                "experiment_id": self.experiment_id, "looked_at": self._looked_at,
                "reconciled_at": self._reconciled_at}
        connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                               [(k, None if v is None else str(v)) for k, v in meta.items()])


class _closing:
    """Close a sqlite3 connection on exit (its own context manager only commits)."""

    def __init__(self, connection):
        self.connection = connection

    def __enter__(self):
        return self.connection

    def __exit__(self, *exc):
        self.connection.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- a page of the board -------------------------------------------------------------------------
