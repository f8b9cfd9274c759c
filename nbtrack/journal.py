"""Records the store did not accept, kept on disk until it does.

One file per record under the journal folder (``$NBTRACK_JOURNAL_DIR``, default
``~/.local/state/nbtrack/journal``), named so that listing the folder gives the order the cells
ran in. Each file holds the tracking URI the record was meant for and the record itself (its model
objects included), pickled. ``nbtrack sync`` and the next tracked cell that reaches the store
replay them in order; a replayed run keeps its original start and end times.
"""

from __future__ import annotations

import os
import pickle
import time
import uuid
from dataclasses import replace
from pathlib import Path

from nbtrack.record import CellRecord


def journal_root() -> Path:
    """The journal folder: ``$NBTRACK_JOURNAL_DIR``, else ``~/.local/state/nbtrack/journal``."""
    configured = os.environ.get("NBTRACK_JOURNAL_DIR")
    if configured:
        return Path(configured)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "nbtrack" / "journal"


class Journal:
    """The records waiting for a store, oldest first."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else journal_root()

    def keep(self, record: CellRecord, tracking_uri: str) -> Path:
        """Write a record to disk (atomically) and return where it went."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{record.start_time_ms:015d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.record"
        target = self.root / name
        partial = target.with_suffix(".partial")
        payload = {"tracking_uri": tracking_uri, "record": record}
        try:
            data = pickle.dumps(payload)
        except Exception:  # an estimator that cannot be pickled: keep everything else
            payload["record"] = replace(record, models=())
            data = pickle.dumps(payload)
        partial.write_bytes(data)
        os.replace(partial, target)
        return target

    def pending(self, tracking_uri: str | None = None) -> list[Path]:
        """Files of records still waiting (for ``tracking_uri`` only, when given), oldest first."""
        if not self.root.is_dir():
            return []
        found = sorted(self.root.glob("*.record"))
        if tracking_uri is None:
            return found
        return [path for path in found if self._uri(path) == tracking_uri]

    def load(self, path: Path) -> tuple[str, CellRecord]:
        """The tracking URI and the record kept in ``path``."""
        payload = pickle.loads(path.read_bytes())
        return payload["tracking_uri"], payload["record"]

    def discard(self, path: Path) -> None:
        """Forget a record the store now has."""
        path.unlink(missing_ok=True)

    def _uri(self, path: Path) -> str | None:
        try:
            return self.load(path)[0]
        except Exception:  # unreadable: listed under every URI, so sync reports it
            return None


def replay(journal: Journal, write, tracking_uri: str | None = None,
           max_seconds: float | None = None) -> tuple[list[tuple[CellRecord, str]], list[Path]]:
    """Write waiting records in order with ``write(uri, record) -> run_id or None``; stop at the
    first the store still refuses (order matters). Returns (written, still waiting).
    """
    started = time.monotonic()
    written = []
    waiting = journal.pending(tracking_uri)
    while waiting:
        if max_seconds is not None and time.monotonic() - started > max_seconds:
            break
        path = waiting[0]
        uri, record = journal.load(path)
        run_id = write(uri, record)
        if run_id is None:
            break
        journal.discard(path)
        written.append((record, run_id))
        waiting.pop(0)
    return written, waiting
