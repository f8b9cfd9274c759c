"""The run index: a summary of every run of an experiment, so the board ranks 10,000 runs at once.

``mlflow.search_runs`` reads every run's params, metrics and tags through the store on each call
(seconds at 10,000 runs on SQLite), and ordering by a metric costs as much for a first page of 50.
The index keeps one summary a run (its info, latest metric values, params, tags and dataset
inputs) in memory and in a small SQLite file of nbtrack's own, and asks MLflow only what changed.
MLflow stays the only source of truth: the index is read from MLflow through ``MlflowClient``
alone, and deleting the file loses nothing.

Where the file lives, and how the recorder fills it as it writes: :mod:`nbtrack.store.index_file`.
How it stays current (:meth:`RunIndex.refresh`):

- the rows recorders (this process's or others') put in the file since the last look;
- runs that started since the last look, with a margin for clock skew between processes
  (``attributes.start_time >= ...``), and runs that ended since (``attributes.end_time``): a few
  seconds for a SQLite store, whose writers share this machine's clock, two minutes for others;
- every run the index holds as RUNNING that started in the last 24 hours, read again (live
  metrics);
- the experiment's deleted runs (``ViewType.DELETED_ONLY``), dropped from the ranking; runs the
  index holds as deleted that are no longer, read again (restored);
- a full reconcile, reading every run again, when the file is missing, unreadable, of another
  schema version, or older than ``$NBTRACK_INDEX_RECONCILE_SECONDS`` (default 600). Changes the
  steps above cannot see (a finished run renamed or re-tagged in the MLflow UI, a run created
  with a start time in the past) show within that bound, or at once with ``refresh(full=True)``.

A board's first look (``refresh(background=True)``) never waits for every run: it ranks what
the file holds (the runs recorders wrote, on this machine) and the newest
:data:`QUICK_LOOK_RUNS` runs (any writer's), and reads the rest in pages in the background,
telling :meth:`RunIndex.on_change` listeners as the ranking fills.

Ranking and filtering (:meth:`RunIndex.search`) evaluate MLflow's filter syntax with MLflow's own
in-memory evaluator (``SearchUtils.filter``, which MLflow's file store uses), on summaries ordered
as the SQL store orders ``search_runs`` (start time, newest first, then run id).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path

from nbtrack.config import DEFAULT_RECONCILE_SECONDS, RECONCILE_ENV
from nbtrack.store.index_file import (
    IndexFile,
    IndexUnusable,
    index_path,
    sqlite_file,
    without_gc,
)
from nbtrack.store.kernel_state import absolute_tracking_uri
from nbtrack.store.summaries import RUNNING, RunSummary, in_natural_order, prefetch

# Runs other processes start are looked for from this long before the last look: their clocks
# (another machine's, on a team server) may lag ours. A SQLite store's writers share our clock,
# and commit a run as they create it.
CLOCK_SKEW_MS = 120_000
LOCAL_CLOCK_SKEW_MS = 5_000
LIVE_RUN_MS = 24 * 3600 * 1000  # running runs younger than this are read again at each look
PAGE_SIZE = 10_000  # runs per search_runs page, as mlflow.search_runs reads them
FILL_PAGE_SIZE = 2_500  # runs per page of a first fill in the background (ranked as they come)
QUICK_LOOK_RUNS = 250  # newest runs a first look reads at once (other writers' too)
FILL_NOTIFY_SECONDS = 1.0  # listeners hear of a filling index at most this often
IDS_PER_QUERY = 100  # run ids per "attributes.run_id IN (...)" filter


class RunIndex:
    """The summaries of one experiment's runs, kept current from MLflow.

    Parameters
    ----------
    tracking_uri
        The MLflow store (relative SQLite paths are made absolute).
    experiment_id
        The experiment whose runs are indexed.
    folder
        Where the index file goes; default :func:`index_path`'s choice.
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
        self._file = IndexFile(self.path, self.tracking_uri, self.experiment_id)
        if reconcile_seconds is None:
            reconcile_seconds = float(os.environ.get(RECONCILE_ENV) or DEFAULT_RECONCILE_SECONDS)
        self.reconcile_seconds = reconcile_seconds
        self._skew_ms = LOCAL_CLOCK_SKEW_MS if sqlite_file(self.tracking_uri) else CLOCK_SKEW_MS
        self._runs: dict[str, RunSummary] = {}
        self._ordered: list[RunSummary] | None = None  # active runs in natural order
        self._looked_at: int | None = None  # ms, wall clock when the last refresh began
        self._reconciled_at: int | None = None
        self._seq = 0  # the last row of the file merged here
        self._unsaved: set[str] = set()  # runs whose summary here differs from the file's
        self._loaded = False
        self._lock = threading.RLock()
        self._background: threading.Thread | None = None
        self._listeners: list = []
        self.last_refresh: dict = {}

    @classmethod
    def shared(cls, tracking_uri: str, experiment_id: str) -> RunIndex:
        """The process's index of this experiment, created on first use.

        One copy a process: the board, ``nbtrack.leaderboard()`` and the refresh after each
        tracked cell then share the summaries in memory instead of each reloading the file.
        """
        key = (absolute_tracking_uri(tracking_uri), str(experiment_id),
               str(index_path(tracking_uri, str(experiment_id))))
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
                self._ordered = in_natural_order([s for s in self._runs.values() if not s.deleted])
            return list(self._ordered)

    def search(self, filter_string: str | None = None,
               order_by: list[str] | None = None) -> list[RunSummary]:
        """The active runs ``search_runs(filter_string=..., order_by=...)`` would return, in its
        order. A filter MLflow cannot read raises ``MlflowException`` as ``search_runs`` does.
        """
        from mlflow.utils.search_utils import SearchUtils

        runs = self.summaries()
        if filter_string or order_by:
            prefetch(runs)  # what they read (params, tags...), in one read of the file
        if filter_string:
            runs = SearchUtils.filter(runs, filter_string)
        if order_by:
            runs = SearchUtils.sort(runs, order_by)
        return runs

    def __len__(self) -> int:
        return len(self.summaries())

    # -- keeping current ----------------------------------------------------------------------

    @property
    def filling(self) -> bool:
        """True while the index has never held every run and a background read is bringing
        them: what it ranks is the runs read so far.
        """
        thread = self._background
        return self._reconciled_at is None and thread is not None and thread.is_alive()

    def on_change(self, listener) -> None:
        """Call ``listener()`` when a background read changed the index (on that thread, at most
        every :data:`FILL_NOTIFY_SECONDS` while it fills, and when it ends). A bound method is
        held weakly: a board that is gone stops hearing.
        """
        held = weakref.WeakMethod(listener) if hasattr(listener, "__self__") else (
            lambda: listener)
        with self._lock:
            if all(other() != listener for other in self._listeners):
                self._listeners.append(held)

    def _notify(self) -> None:
        with self._lock:
            self._listeners = [held for held in self._listeners if held() is not None]
            listeners = [held() for held in self._listeners]
        from nbtrack.threads import with_imports

        for listener in listeners:
            if listener is not None:
                try:  # a board's refresh that needs a first import does it with the gate
                    with_imports(listener)
                except Exception:  # noqa: S110 - a board says its own errors; the read goes on
                    pass

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
            With ``full=None``, a due full read happens in a background thread and this call
            returns at once with what the index holds (changes since the last look) or, never
            having looked, the file's runs and the newest :data:`QUICK_LOOK_RUNS`; listeners
            (:meth:`on_change`) hear as the read goes on.

        Returns
        -------
        dict
            ``{"mode": "full" | "changes" | "quick", "read": runs read from MLflow, "changed":
            runs added or updated, "removed": runs deleted or gone, "seconds": ...}``.

        """
        started = time.perf_counter()
        with self._lock:
            if not self._loaded:
                self._load()
            if full is None and background and self.reconcile_due():
                stats = self._look_while_reading()
            else:
                if full is None:
                    full = self.reconcile_due()
                stats = self._reconcile() if full else self._changes()
            stats["seconds"] = time.perf_counter() - started
            self.last_refresh = stats
            return stats

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a background full read to end (tests, benchmarks)."""
        thread = self._background
        if thread is not None:
            thread.join(timeout)

    def _look_while_reading(self) -> dict:
        """A look that does not wait for the due full read: that goes on in the background."""
        if self._looked_at is not None:
            stats = self._changes()
        elif self.filling:  # the first read is on its way (a board re-ranking as it fills)
            return self._file_changes()
        else:  # never looked: the recorders' rows hold this machine's runs, not other writers'
            self._merge_file_rows()
            stats = self._quick_look()
            if stats["mode"] == "full":
                return stats
        self._reconcile_in_background()
        return stats

    def _quick_look(self) -> dict:
        """The newest runs, at once; all of them (a full read) when there are few."""
        from mlflow.entities import ViewType

        looked_at = _now_ms()
        page = self._client().search_runs([self.experiment_id], run_view_type=ViewType.ALL,
                                          max_results=QUICK_LOOK_RUNS)
        fetched = [RunSummary.from_run(run) for run in page]
        if len(fetched) < QUICK_LOOK_RUNS:
            self._replace_all(fetched, looked_at)
            return {"mode": "full", "read": len(fetched), "changed": len(fetched), "removed": 0}
        self._merge(fetched)
        return {"mode": "quick", "read": len(fetched), "changed": len(fetched), "removed": 0}

    def _merge(self, summaries: list[RunSummary], from_file: bool = False) -> list[RunSummary]:
        """Take these summaries in; the ones that changed what the index held."""
        prefetch(self._runs[s.run_id] for s in summaries if s.run_id in self._runs)  # compared
        changed = []
        for summary in summaries:
            held = self._runs.get(summary.run_id)
            if held is not None and from_file and held.status != RUNNING \
                    and summary.status == RUNNING:
                continue  # a row written while the run ran; this index has read its end
            if held is None or not held.same_as(summary):
                self._runs[summary.run_id] = summary
                changed.append(summary)
                if from_file:
                    self._unsaved.discard(summary.run_id)
                else:
                    self._unsaved.add(summary.run_id)
        if changed:
            self._ordered = None
        return changed

    def _file_changes(self) -> dict:
        """Only the rows recorders added to the file since the last look (no MLflow read)."""
        changed = self._merge_file_rows()
        return {"mode": "changes", "read": 0, "changed": len(changed), "removed": 0}

    def _merge_file_rows(self) -> list[RunSummary]:
        try:
            records, self._seq = self._file.rows_since(self._seq)
        except (sqlite3.DatabaseError, IndexUnusable, OSError):
            return []  # the next save rebuilds the file
        return self._merge(_summaries(records), from_file=True)

    def _reconcile_in_background(self) -> None:
        if self._background is not None and self._background.is_alive():
            return

        from nbtrack.threads import start, with_imports

        def work():
            try:
                fetched, looked_at = with_imports(lambda: self._read_all(filling=True))
            except Exception as error:  # a cache: the next refresh tries again, and says so
                from nbtrack import display

                display.warn(f"could not re-read the runs for the index: {error}")
                return
            with self._lock:
                self._replace_all(fetched, looked_at)
            self._notify()

        self._background = start("run-index", work)

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def _search(self, filter_string: str = "", view=None, page_size: int = PAGE_SIZE,
                each_page=None) -> list:
        from mlflow.entities import ViewType

        client = self._client()
        found, token = [], None
        while True:
            page = client.search_runs([self.experiment_id], filter_string=filter_string,
                                      run_view_type=view or ViewType.ACTIVE_ONLY,
                                      max_results=page_size, page_token=token)
            found.extend(page)
            if each_page is not None:
                each_page(page)
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

    def _read_all(self, filling: bool = False) -> tuple[list[RunSummary], int]:
        """Every run; while ``filling`` an index that never held them all, each page is ranked
        as it comes and listeners hear of it.
        """
        from mlflow.entities import ViewType

        looked_at = _now_ms()
        filling = filling and self._reconciled_at is None
        told = [time.monotonic()]

        def each_page(page) -> None:
            with self._lock:
                self._merge([RunSummary.from_run(run) for run in page])
            if time.monotonic() - told[0] >= FILL_NOTIFY_SECONDS:
                told[0] = time.monotonic()
                self._notify()

        runs = self._search(view=ViewType.ALL, page_size=FILL_PAGE_SIZE if filling else PAGE_SIZE,
                            each_page=each_page if filling else None)
        return [RunSummary.from_run(run) for run in runs], looked_at

    def _reconcile(self) -> dict:
        fetched, looked_at = self._read_all()
        before = set(self._runs)
        self._replace_all(fetched, looked_at)
        return {"mode": "full", "read": len(fetched), "changed": len(fetched),
                "removed": len(before - set(self._runs))}

    def _replace_all(self, fetched: list[RunSummary], looked_at: int) -> None:
        held = self._runs
        prefetch(held[s.run_id] for s in fetched if s.run_id in held)  # compared below
        self._runs = {s.run_id: s for s in fetched}
        self._ordered = None
        self._looked_at = looked_at
        self._reconciled_at = looked_at
        # Only rows that differ from the file's are written: each write gives its row a new
        # sequence number, which every other process's index then reads again.
        self._unsaved = {s.run_id for s in fetched if s.run_id in self._unsaved
                         or s.run_id not in held or not held[s.run_id].same_as(s)}
        self._save(keep_only=set(self._runs))

    def _changes(self) -> dict:
        from mlflow.entities import ViewType

        looked_at = _now_ms()
        from_file = self._merge_file_rows()
        since = (self._looked_at or 0) - self._skew_ms
        read = self._search(f"attributes.start_time >= {since}")  # then ended since, not those:
        read += self._search(f"attributes.end_time >= {since} and attributes.start_time < {since}")
        # Live metrics of running runs. Runs left RUNNING for over a day are mostly abandoned
        # (a killed kernel): they wait for the full read, or show when they end (end_time).
        live_since = looked_at - LIVE_RUN_MS
        running = [s.run_id for s in self._runs.values() if s.status == RUNNING
                   and not s.deleted and (s.start_time or 0) >= live_since]
        deleted_now = {run.info.run_id: run for run in self._search(view=ViewType.DELETED_ONLY)}
        held_deleted = [s.run_id for s in self._runs.values() if s.deleted]
        restored = [run_id for run_id in held_deleted if run_id not in deleted_now]
        read += self._by_ids(running + restored)
        read += [run for run_id, run in deleted_now.items()
                 if run_id not in self._runs or not self._runs[run_id].deleted]
        changed = self._merge([RunSummary.from_run(run) for run in read])
        found = {run.info.run_id for run in read}
        # Held as deleted, neither deleted nor found now: removed for good (mlflow gc).
        gone = [run_id for run_id in restored if run_id not in found]
        for run_id in gone:
            del self._runs[run_id]
        if gone:
            self._ordered = None
        self._looked_at = looked_at
        self._save(removed=gone)
        return {"mode": "changes", "read": len(read), "changed": len(changed) + len(from_file),
                "removed": len(gone) + sum(1 for s in changed if s.deleted)}

    # -- the file ------------------------------------------------------------------------------

    def _load(self) -> None:
        """Read the file into memory; an unusable file is discarded (a full read follows)."""
        self._loaded = True
        if not self._file.exists():
            return
        try:
            meta, lights, seq = self._file.load()
            with without_gc():  # the file gives them in natural order: no sort
                loaded = [RunSummary(None, light, None, self._file) for light in lights]
                self._runs = {s.run_id: s for s in loaded}
                self._ordered = [s for s in loaded if not s.deleted]
            del lights, loaded
            self._seq = seq
            self._looked_at = int(meta["looked_at"]) if meta.get("looked_at") else None
            self._reconciled_at = (int(meta["reconciled_at"]) if meta.get("reconciled_at")
                                   else None)
        except (sqlite3.DatabaseError, IndexUnusable, ValueError, KeyError, TypeError):
            # Corrupt, another schema, or another store's: start again from MLflow.
            self._runs, self._looked_at, self._reconciled_at, self._seq = {}, None, None, 0
            self._ordered = None
            self._file.discard()

    def _save(self, removed: list[str] = (), keep_only: set[str] | None = None) -> None:
        """Write the runs read since the last save (and the look's times) to the file."""
        try:
            self._write(removed, keep_only)
        except (sqlite3.DatabaseError, IndexUnusable):
            # Broken under us (another process, a full disk): one more go on a fresh file, with
            # the runs whose texts it still gives; the others wait for a full read.
            prefetch(self._runs.values())
            self._file.discard()
            self._seq = 0
            self._unsaved = {s.run_id for s in self._runs.values() if s.has_text()}
            if len(self._unsaved) < len(self._runs):
                self._reconciled_at = None
            try:
                self._write((), None)
            except (sqlite3.DatabaseError, IndexUnusable, OSError) as error:
                self._warn_unsaved(error)
        except OSError as error:
            self._warn_unsaved(error)

    def _warn_unsaved(self, error) -> None:
        from nbtrack import display

        display.warn(f"the run index could not be saved to {self.path} ({error}); it is kept in "
                     f"memory only, and the next process reads the runs from MLflow again.")

    def _write(self, removed, keep_only) -> None:
        meta = {"looked_at": self._looked_at, "reconciled_at": self._reconciled_at}
        summaries = [self._runs[run_id] for run_id in self._unsaved if run_id in self._runs]
        others, seq = self._file.save(summaries, self._seq, meta, removed, keep_only)
        self._unsaved = set()
        # Rows other processes added meanwhile: newer than ours only where they were not
        # written here too (those were rewritten above, with what this look read).
        written = {s.run_id for s in summaries}
        self._merge(_summaries(row for row in others if row[0][0] not in written),
                    from_file=True)
        self._seq = seq


def _summaries(rows) -> list[RunSummary]:
    """Summaries of the file's rows: the light part now, the rest when asked."""
    return [RunSummary(None, light, text) for light, text in rows]


def _now_ms() -> int:
    return int(time.time() * 1000)
