"""One kernel's queue of runs on their way to the store: journal first, then the background writer.

The tracker hands each ended cell's record to :meth:`KernelQueue.submit`, which journals it and
queues it for the writer, and returns at once (or waits, in batch executions and for
``--register``). The queue opens the store and recovers ended kernels' journals on threads of
their own the first time it is used, and notes a running cell's start and its series in the
journal, so a kernel that dies mid-cell still leaves a KILLED run with its curve.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from nbtrack import display, threads
from nbtrack.capture.cell import ActiveCell
from nbtrack.config import EXECUTION_ID_ENV, WAIT_FOR_STORE_ENV, Nbtrack, batch_runner
from nbtrack.display import short_error as _short
from nbtrack.record import CELL_TAG, SUPERSEDES_TAG, CellRecord, RunOutcome

# How often a running cell's nbtrack.log_metric points are appended to the journal.
SPOOL_INTERVAL_MS = 1000


class KernelQueue:
    """The journal and background writer of one kernel, made on first use.

    Parameters
    ----------
    settings
        The kernel's :class:`~nbtrack.config.Nbtrack` settings (waits, draining, background).
    environ
        The kernel's environment (batch executions and ``NBTRACK_WAIT_FOR_STORE`` wait).
    recorder_for
        Gives the recorder writing to a tracking URI.
    on_written
        Called on the writer's thread, with the gate, after a run reached the store.

    """

    def __init__(self, settings: Nbtrack, environ: Mapping[str, str],
                 recorder_for: Callable[[str], Any],
                 on_written: Callable[[CellRecord, RunOutcome], None]) -> None:
        self.settings = settings
        self.environ = environ
        self.recorder_for = recorder_for
        self._on_written = on_written
        self.unrecorded: list[CellRecord] = []  # records neither journaled nor written
        self._previous_runs: dict[str, str] = {}  # cell identity -> its last run
        self._writer = None
        self._store_open = threading.Event()
        self.recovery: threading.Thread | None = None

    @property
    def writer(self):
        """The background writer of this kernel, with its journal (made on first use)."""
        if self._writer is None:
            import atexit
            import tempfile

            from nbtrack.durable.journal import KernelJournal
            from nbtrack.durable.writer import BackgroundWriter
            from nbtrack.store.kernel_state import tracking_uri

            try:
                journal = KernelJournal.create()
            except OSError as error:  # e.g. a read-only home: keep journaling, somewhere else
                fallback = Path(tempfile.gettempdir()) / f"nbtrack-journal-{os.getuid()}"
                journal = KernelJournal.create(fallback)
                display.warn(f"the journal folder is not writable ({_short(error)}); runs are "
                             f"journaled in {fallback} instead (set NBTRACK_JOURNAL_DIR).")
            self._writer = BackgroundWriter(journal, self.recorder_for, on_written=self._written,
                                            prepare=self._with_supersedes)
            atexit.register(self.close)
            self._open_store(tracking_uri(self.environ))
            self._start_recovery(journal.folder)
        return self._writer

    # -- a running cell -----------------------------------------------------------------------

    def note_begun(self, active: ActiveCell, tags: dict[str, str], source: str) -> None:
        """Journal the cell's start, so a kernel dying during it still leaves a (KILLED) run."""
        from nbtrack.durable.writer import begun_facts

        facts = begun_facts(active.tracking_uri, active.experiment, active.run_name,
                            active.started_ms, tags, source, active.run_id)
        active.begun_path = self.writer.journal.begun(active.started_ms, facts)

    def spool(self, active: ActiveCell, now: int) -> None:
        """Append the series logged so far to the journal, beside the cell's ``.begun`` note."""
        active.spooled_ms = now
        if active.begun_path is None or active.spool_failed:
            return
        try:
            if active.spool is None:
                from nbtrack.durable.journal import SeriesSpool

                active.spool = SeriesSpool(active.begun_path)
            active.spool.write(active.series)
        except Exception as error:  # disk full, say: the points are still in memory
            display.warn(f"metric series not saved to the journal ({_short(error)}); should the "
                         "kernel die during this cell, the points logged so far are lost.")
            active.spool_failed = True  # do not try (and warn) again for this cell

    # -- an ended cell ------------------------------------------------------------------------

    def submit(self, record: CellRecord, active: ActiveCell) -> RunOutcome | None:
        """Journal ``record`` and queue it for the writer. Returns the outcome when the cell
        waits for the store (see :meth:`waits_for_store`), else None.
        """
        import pickle

        from nbtrack.durable.journal import Entry
        from nbtrack.store.kernel_state import tracking_uri

        writer = self.writer
        uri = active.tracking_uri or tracking_uri(self.environ)
        try:
            entry = writer.journal.keep(record, uri)
        except Exception as error:  # disk full, folder not writable: write from memory
            display.warn(f"run '{record.run_name}' could not be written to the journal in "
                         f"{writer.journal.folder} ({_short(error)}); it is recorded from memory "
                         "and lost if this kernel dies first.")
            entry = Entry(None, uri, pickle.dumps({"tracking_uri": uri, "record": record}))
        writer.journal.ended(active.begun_path)
        with threads.GATE.lent():  # the store is opened on a thread that needs the gate
            self._store_open.wait(timeout=self.settings.wait_seconds)
        writer.submit(entry)
        if not self.waits_for_store(record):
            return None
        if not writer.flush(timeout=self.settings.wait_seconds):
            return None
        return writer.outcomes.pop(entry.path, None)

    def waits_for_store(self, record: CellRecord) -> bool:
        """Whether the cell waits for its run to reach the store before it returns: in batch
        executions (the notebook's outputs and the store then agree when the execution ends)
        and for ``--register`` (the summary names the new version).
        """
        if record.register_as or not self.settings.background:
            return True
        if self.environ.get(WAIT_FOR_STORE_ENV, "").lower() in ("1", "true", "yes"):
            return True
        return bool(self.environ.get(EXECUTION_ID_ENV) or batch_runner(self.environ))

    @property
    def refusal(self) -> str | None:
        """Why the store refused the writer's last attempt; None while it accepts."""
        return self._writer.refusal if self._writer is not None else None

    # -- the store, in the background ---------------------------------------------------------

    def _open_store(self, tracking_uri: str) -> None:
        """Open the store on a thread while the first tracked cell runs: a new SQLite store
        creates its tables then, which takes seconds and must not be cut short by a kernel
        that exits right after its last cell (see :meth:`submit`). Opening imports (the store's
        SQLAlchemy dialect, alembic's migrations), so the thread holds the gate.
        """

        def run() -> None:
            try:
                from nbtrack.store.kernel_state import quiet_mlflow

                with quiet_mlflow():  # a new store's "Creating initial MLflow database tables"
                    _ = self.recorder_for(tracking_uri).client
            except Exception as error:  # the writer retries, and reports a store it cannot open
                display.warn(f"the store at {tracking_uri} did not open yet ({_short(error)}); "
                             "runs wait in the journal until it does.")
            finally:
                self._store_open.set()

        threads.start("open-store", run, gated=True)

    def _start_recovery(self, own_folder: Path) -> None:
        """Write, on a thread of its own, what kernels that have ended left in their journals."""
        from nbtrack.durable.writer import recover

        def run() -> None:
            self._store_open.wait()  # imports done by the store's opening need not be repeated
            try:
                result = recover(self.recorder_for, skip=own_folder)
            except Exception as error:
                display.warn(f"journals of ended kernels not recovered: {_short(error)}")
                return
            if result.written or result.killed:
                killed = (f"; {len(result.killed)} run(s) they were running marked KILLED"
                          if result.killed else "")
                display.info(f"recorded {len(result.written)} run(s) that ended kernels left "
                             f"in the journal{killed}.")

        self.recovery = threads.start("recovery", run)

    def _with_supersedes(self, record: CellRecord) -> CellRecord:
        """Tag a re-run of a cell with the run it supersedes (the cell's previous run here)."""
        previous = self._previous_runs.get(record.tags.get(CELL_TAG, ""))
        if not previous or SUPERSEDES_TAG in record.tags:
            return record
        return replace(record, tags={**record.tags, SUPERSEDES_TAG: previous})

    def _written(self, record: CellRecord, outcome: RunOutcome) -> None:
        """The writer put a run in the store (called on its thread)."""
        self._previous_runs[record.tags.get(CELL_TAG, "")] = outcome.run_id
        self._on_written(record, outcome)

    # -- reading and closing ------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued run is in the store; False if ``timeout`` ran out."""
        if self._writer is None:
            return True
        return self._writer.flush(timeout)

    def waiting_records(self) -> list[CellRecord]:
        """Records not in the store yet: queued for the writer, or kept in memory only."""
        waiting = list(self.unrecorded)
        if self._writer is not None:
            waiting += [entry.record() for entry in self._writer.queued()]
        return waiting

    def close(self, timeout: float | None = None) -> None:
        """Drain the writer (bounded by ``timeout`` or the ``drain_seconds`` setting) and release
        the journal; what the store did not take stays on disk for ``nbtrack sync``.
        """
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            left = writer.close(self.settings.drain_seconds if timeout is None else timeout)
        except Exception as error:  # at exit too: never a traceback of ours
            display.warn(f"journal not closed cleanly: {_short(error)}")
            return
        if left:
            display.warn(f"{left} run(s) not in the store yet stay in the journal at "
                         f"{writer.journal.folder}; `nbtrack sync` writes them.")
