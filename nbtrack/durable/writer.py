"""Writing journaled records to the store on a thread of their own, so a cell never waits for it.

The tracker journals a record (nbtrack.durable.journal) and hands it to the :class:`BackgroundWriter`,
which writes records one at a time, oldest first. When the store refuses (down, locked, slow to the
point of failing, artifact location unwritable), the record stays at the head of the queue and in
the journal, and the writer tries again with growing pauses; later records wait behind it so the
store sees runs in the order the cells ran. A write cut short resumes from the parts the journal
says were written.

:func:`recover` takes over the journals of kernels that have ended (SIGKILL included): their
records are written, and the cells they were running are ended (or created) as KILLED runs. Both
the writer (on a thread of its own, when a kernel starts tracking) and ``nbtrack sync`` use it.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nbtrack import display
from nbtrack.display import short_error as _short
from nbtrack.durable.journal import Entry, KernelJournal, kernel_folders, read_spool
from nbtrack.record import CellRecord, RunOutcome
from nbtrack.threads import GATE, start, with_imports

# Pauses between attempts while the store refuses: quick at first, then every half minute.
RETRY_PAUSES = (0.5, 1, 2, 5, 10, 30)


def retry_pause(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (from 0) at a store that refused."""
    return RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)]


def write_entry(recorder, journal: KernelJournal | None, entry: Entry,
                prepare: Callable[[CellRecord], CellRecord] | None = None) -> RunOutcome:
    """Write one journaled record, resuming from what was already written; forget it once the
    store has all of it. The outcome's ``retry`` says the store refused part of it for now.
    ``prepare`` may add what is known only at write time (the run a re-run supersedes).
    """
    record = entry.record()
    if prepare is not None:
        record = prepare(record)
    progress = journal.progress(entry) if journal is not None else {}

    def save(state: dict) -> None:
        if journal is not None:
            journal.save_progress(entry, state)

    outcome = recorder.write(record, progress=progress, save_progress=save)
    if outcome.run_id is not None and not outcome.retry and journal is not None:
        journal.discard(entry)
    return outcome


@dataclass
class Recovery:
    """What :func:`recover` did with the journals of ended kernels."""

    written: list[tuple[CellRecord, RunOutcome]] = field(default_factory=list)
    killed: list[tuple[str, str, str]] = field(default_factory=list)  # (run name, id, store)
    waiting: int = 0
    problems: list[str] = field(default_factory=list)


def recover(recorder_for: Callable[[str], object], root: Path | None = None,
            skip: Path | None = None, on_written: Callable | None = None) -> Recovery:
    """Take over the journal of every kernel that has ended and write what it left.

    Records go to the stores they were meant for, oldest first; a folder stops at the first
    record its store still refuses (order matters) and is left for next time. Cells a kernel was
    running when it died become KILLED runs, with a tag saying why.
    """
    result = Recovery()
    for folder in kernel_folders(root):
        if skip is not None and folder == skip:
            continue
        journal = KernelJournal.claim(folder)
        if journal is None:  # its kernel is alive and writes its own records
            continue
        try:
            _recover_folder(journal, recorder_for, result, on_written)
        finally:
            journal.close()
    return result


def _recover_folder(journal: KernelJournal, recorder_for, result: Recovery, on_written) -> None:
    entries = journal.records()
    for index, entry in enumerate(entries):
        outcome = with_imports(lambda entry=entry: write_entry(recorder_for(entry.tracking_uri),
                                                               journal, entry),
                               redo=lambda outcome: outcome.retry)
        result.problems.extend(outcome.problems)
        if outcome.run_id is None or outcome.retry:
            result.waiting += len(entries) - index
            return
        record = entry.record()
        result.written.append((record, outcome))
        if on_written is not None:
            on_written(record, outcome)
    for path, facts in journal.unfinished():
        uri = facts.get("tracking_uri")
        if not uri:
            journal.ended(path)
            continue
        reason = (f"the kernel died (pid {facts.get('pid', '?')} on {facts.get('host', '?')}) "
                  "while this cell was running; recorded by nbtrack afterwards")
        try:
            def made(run_id: str, path=path, facts=facts) -> None:
                # Noted before the run is ended: a recovery cut short (its kernel exits) leaves
                # the next one this run to end, not a second run.
                journal.update_begun(path, {**facts, "run_id": run_id})

            run_id = with_imports(lambda uri=uri, facts=facts, path=path, reason=reason, made=made:
                                  recorder_for(uri).record_killed(facts, reason, read_spool(path),
                                                                  on_created=made))
        except Exception as error:
            result.problems.append(f"run '{facts.get('run_name')}' of an ended kernel not marked "
                                   f"KILLED yet: {_short(error)}")
            result.waiting += 1
            continue
        result.killed.append((str(facts.get("run_name")), run_id, uri))
        journal.ended(path)


class BackgroundWriter:
    """Writes one kernel's journaled records to the store, in order, on a daemon thread.

    Parameters
    ----------
    journal
        The kernel's journal; records are already in it when they are submitted.
    recorder_for
        Gives the recorder for a tracking URI.
    on_written
        Called (on the writer's thread) with each record and its outcome once the store has it.
    prepare
        Called (on the writer's thread) with each record just before it is written.

    """

    def __init__(self, journal: KernelJournal, recorder_for: Callable[[str], object],
                 on_written: Callable[[CellRecord, RunOutcome], None] | None = None,
                 prepare: Callable[[CellRecord], CellRecord] | None = None) -> None:
        self.journal = journal
        self._recorder_for = recorder_for
        self._on_written = on_written
        self._prepare = prepare
        self._queue: collections.deque[Entry] = collections.deque()
        self._condition = threading.Condition()
        self._writing = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.outcomes: dict[Path, RunOutcome] = {}
        # Why the store refused the last attempt; None while it accepts.
        self.refusal: str | None = None

    # -- the tracker's side -------------------------------------------------------------------

    def submit(self, entry: Entry) -> None:
        """Queue a journaled record for writing."""
        with self._condition:
            self._queue.append(entry)
            self._condition.notify_all()
            if self._thread is None:
                self._thread = start("writer", self._run)

    def pending(self) -> int:
        """How many records are not in the store yet."""
        with self._condition:
            return len(self._queue)

    def queued(self) -> list[Entry]:
        """The entries not in the store yet, oldest first."""
        with self._condition:
            return list(self._queue)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted record is in the store (or ``timeout`` seconds pass).

        Returns whether the queue is empty. A cell waiting here lends the writer its turn to draw
        its work that needs the gate (see :mod:`nbtrack.threads`).
        """
        if threading.current_thread() is self._thread:  # a callback of the writer's own
            return not self._queue
        with GATE.lent(), self._condition:
            return self._condition.wait_for(lambda: not self._queue, timeout=timeout)

    def close(self, timeout: float) -> int:
        """Write what is queued for at most ``timeout`` seconds, then stop; what is left stays in
        the journal for ``nbtrack sync`` or the next kernel. Returns how many records are left.
        """
        self.flush(timeout)
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
            left = len(self._queue)
        if self._thread is not None:
            self._thread.join(timeout=1)
        if not self._writing:
            self.journal.close()
        return left

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        attempts = 0
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return
                entry = self._queue[0]
                self._writing = True
            outcome = self._attempt(entry)
            if outcome is not None:
                # Before the entry leaves the queue: whoever flushes then sees its effects.
                self.outcomes[entry.path] = outcome
                if self._on_written is not None:
                    try:
                        # Callbacks refresh boards, which may draw: between executions only.
                        with GATE.idle():
                            self._on_written(entry.record(), outcome)
                    except Exception as error:  # a board that cannot refresh loses nothing
                        display.warn(f"after recording: {_short(error)}")
            with self._condition:
                self._writing = False
                if outcome is not None:
                    self._queue.popleft()
                    self._condition.notify_all()
            if outcome is None:
                pause = retry_pause(attempts)
                attempts += 1
                with self._condition:
                    self._condition.wait_for(lambda: self._stopping, timeout=pause)
                continue
            attempts = 0

    def _attempt(self, entry: Entry) -> RunOutcome | None:
        """Write ``entry``; None when the store refused and it must be tried again."""
        try:
            outcome = with_imports(lambda: write_entry(
                self._recorder_for(entry.tracking_uri), self.journal, entry, self._prepare),
                redo=lambda outcome: outcome.retry)
        except Exception as error:  # a bug of ours: keep the record, say so once
            outcome = RunOutcome(run_id=None, experiment="", tracking_uri=entry.tracking_uri,
                                 problems=(f"recording failed: {_short(error)}",), retry=True)
        refused = outcome.run_id is None or outcome.retry
        if refused:
            first = self.refusal is None
            self.refusal = "; ".join(outcome.problems) or "the store did not answer"
            if first:
                display.warn(f"{self.refusal} The run is queued in {self.journal.folder} and "
                             "written when the store answers again (or run `nbtrack sync`).")
            return None
        if self.refusal is not None:
            display.info("the store answers again; queued runs are being written.")
        self.refusal = None
        for problem in outcome.problems:
            display.warn(problem)
        return outcome


def begun_facts(tracking_uri: str, experiment: str, run_name: str, start_time_ms: int,
                tags: dict[str, str], source: str, run_id: str | None) -> dict:
    """What the journal notes about a tracked cell as it starts (see KernelJournal.begun)."""
    import os

    return {"tracking_uri": tracking_uri, "experiment": experiment, "run_name": run_name,
            "start_time_ms": start_time_ms, "tags": tags, "source": source, "run_id": run_id,
            "pid": os.getpid(), "host": socket.gethostname(), "noted_at": time.time()}
