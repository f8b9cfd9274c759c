"""The on-disk journal: every record is written here before the store sees it.

Each kernel that tracks a cell owns one folder under the journal root (``$NBTRACK_JOURNAL_DIR``,
default ``~/.local/state/nbtrack/journal``; one folder per kernel, named host-pid-start). The
kernel holds an exclusive lock on the folder's ``owner.lock`` for as long as it lives; the operating
system drops the lock when the process ends, however it ends (SIGKILL included), which is how a
later kernel or ``nbtrack sync`` tells a dead kernel's journal from a live one's.

In a kernel's folder, named so that listing it gives the order the cells ran in:

``<start>-<seq>.record``
    a record waiting for the store: the tracking URI it is meant for and the record, pickled.
    Deleted once the store has all of it.
``<start>-<seq>.progress``
    for a record being written: the run id it got and the parts already written, so a write cut
    short is resumed, not duplicated.
``<start>-<seq>.begun``
    a tracked cell that started and has not ended. Left behind by a kernel that died in the middle
    of a cell: its run is then ended (or created) as KILLED.
``<start>-<seq>.series``
    beside a ``.begun`` file: the points the running cell has logged with ``nbtrack.log_metric``,
    appended about once a second while it runs, so a kernel that dies in the middle of a training
    loop leaves the curve up to that moment; the KILLED run gets them.

Records are pickles: they hold the user's fitted models. Files are written to a temporary name and
renamed, so a reader never sees half a file. Nothing here talks to MLflow.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from nbtrack.config import journal_root
from nbtrack.record import CellRecord, Series

LOCK_NAME = "owner.lock"


@dataclass(frozen=True)
class Entry:
    """One record in a journal: where it is, and the bytes it was written from."""

    path: Path
    tracking_uri: str
    data: bytes

    def record(self) -> CellRecord:
        """A fresh copy of the record (its models and data independent of the user's objects)."""
        return pickle.loads(self.data)["record"]


def _write_atomically(target: Path, data: bytes) -> None:
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)


class KernelJournal:
    """The journal folder of one kernel, locked for as long as the kernel lives."""

    def __init__(self, folder: Path, lock_handle) -> None:
        self.folder = folder
        self._lock = lock_handle
        self._sequence = 0

    @classmethod
    def create(cls, root: Path | None = None) -> KernelJournal:
        """Make and lock a new folder for this process."""
        root = Path(root) if root is not None else journal_root()
        name = f"{socket.gethostname()}-{os.getpid()}-{int(time.time() * 1000)}"
        # Made and locked under a hidden name, then renamed into place: a kernel starting at the
        # same moment, looking for ended kernels' folders, must never find this one unlocked.
        staging = root / f".{name}.new"
        staging.mkdir(parents=True, exist_ok=True)
        handle = _try_lock(staging)
        if handle is None:  # cannot happen for a fresh name, unless the pid and ms repeat
            raise OSError(f"journal folder {staging} is locked by another process")
        folder = root / name
        staging.rename(folder)  # the open lock file moves with it, still locked
        return cls(folder, handle)

    @classmethod
    def claim(cls, folder: Path) -> KernelJournal | None:
        """Take over the folder of a kernel that has ended; None while that kernel lives."""
        handle = _try_lock(folder)
        return None if handle is None else cls(folder, handle)

    def _name(self, start_time_ms: int, suffix: str) -> Path:
        self._sequence += 1
        return self.folder / f"{start_time_ms:015d}-{os.getpid()}-{self._sequence:06d}{suffix}"

    # -- records ------------------------------------------------------------------------------

    def keep(self, record: CellRecord, tracking_uri: str) -> Entry:
        """Write a record to disk; return it as an entry for the writer."""
        payload = {"tracking_uri": tracking_uri, "record": record}
        try:
            data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an estimator that cannot be pickled: keep everything else
            payload["record"] = replace(record, models=())
            data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        target = self._name(record.start_time_ms, ".record")
        _write_atomically(target, data)
        return Entry(target, tracking_uri, data)

    def records(self) -> list[Entry]:
        """The records still waiting, oldest first (unreadable files are skipped and listed by
        :meth:`unreadable`).
        """
        entries = []
        for path in sorted(self.folder.glob("*.record")):
            try:
                data = path.read_bytes()
                uri = pickle.loads(data)["tracking_uri"]
            except Exception:
                continue
            entries.append(Entry(path, uri, data))
        return entries

    def unreadable(self) -> list[Path]:
        """Record files that cannot be read back (left in place for a person to look at)."""
        bad = []
        for path in sorted(self.folder.glob("*.record")):
            try:
                pickle.loads(path.read_bytes())["tracking_uri"]
            except Exception:
                bad.append(path)
        return bad

    def progress(self, entry: Entry) -> dict:
        """What was already written for ``entry``: ``{"run_id": ..., "done": [...]}``."""
        path = entry.path.with_suffix(".progress")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def save_progress(self, entry: Entry, progress: dict) -> None:
        """Remember what was written for ``entry``."""
        _write_atomically(entry.path.with_suffix(".progress"), json.dumps(progress).encode())

    def discard(self, entry: Entry) -> None:
        """Forget a record the store now has."""
        entry.path.with_suffix(".progress").unlink(missing_ok=True)
        entry.path.unlink(missing_ok=True)

    # -- cells that began ---------------------------------------------------------------------

    def begun(self, start_time_ms: int, facts: dict) -> Path:
        """Note that a tracked cell started (its run name, experiment, URI, source...)."""
        target = self._name(start_time_ms, ".begun")
        _write_atomically(target, json.dumps(facts).encode())
        return target

    @staticmethod
    def update_begun(path: Path, facts: dict) -> None:
        """Rewrite what is noted of a cell that began (e.g. the run made for it since)."""
        _write_atomically(path, json.dumps(facts).encode())

    def unfinished(self) -> list[tuple[Path, dict]]:
        """Cells that began and never ended, oldest first."""
        found = []
        for path in sorted(self.folder.glob("*.begun")):
            try:
                found.append((path, json.loads(path.read_text())))
            except (OSError, ValueError):
                found.append((path, {}))
        return found

    @staticmethod
    def ended(path: Path | None) -> None:
        """The cell noted at ``path`` ended (its record, if any, is kept separately)."""
        if path is not None:
            path.with_suffix(SPOOL_SUFFIX).unlink(missing_ok=True)
            path.unlink(missing_ok=True)

    # -- the end ------------------------------------------------------------------------------

    def is_empty(self) -> bool:
        """Whether nothing is waiting in the folder."""
        return not any(self.folder.glob("*.record")) and not any(self.folder.glob("*.begun"))

    def close(self) -> None:
        """Release the folder; remove it when nothing waits in it."""
        try:
            if self.is_empty():
                for leftover in self.folder.iterdir():
                    if leftover.name != LOCK_NAME:
                        leftover.unlink(missing_ok=True)
                (self.folder / LOCK_NAME).unlink(missing_ok=True)
                self.folder.rmdir()
        except OSError:  # already gone (its parent was removed), or not ours to remove
            pass
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None


SPOOL_SUFFIX = ".series"
_FRAME_LENGTH = struct.Struct("<Q")


class SeriesSpool:
    """The points of a running cell's series, appended to ``<begun>.series`` as they come.

    Each :meth:`write` appends the points logged since the last one, a frame per series: a
    length, then the pickled key and the raw bytes of its steps, values and timestamps. A kernel
    killed halfway through a write leaves a short last frame, which :func:`read_spool` ignores.
    The file is flushed to the operating system, not synced: it is there to outlive the kernel's
    process, which the system's page cache does.
    """

    def __init__(self, begun_path: Path) -> None:
        self.path = begun_path.with_suffix(SPOOL_SUFFIX)
        self._file = None
        self._written: dict[str, int] = {}

    def write(self, series: Mapping[str, Series]) -> None:
        """Append the points not written yet."""
        frames = []
        for key, points in series.items():
            start, end = self._written.get(key, 0), len(points)
            if end > start:
                frame = pickle.dumps((key, points.steps[start:end].tobytes(),
                                      points.values[start:end].tobytes(),
                                      points.timestamps_ms[start:end].tobytes()),
                                     protocol=pickle.HIGHEST_PROTOCOL)
                frames += [_FRAME_LENGTH.pack(len(frame)), frame]
                self._written[key] = end
        if frames:
            if self._file is None:
                self._file = open(self.path, "ab")  # noqa: SIM115 - appended to while the cell runs
            self._file.write(b"".join(frames))
            self._file.flush()

    def close(self) -> None:
        """Close the file (it stays on disk until the cell's record is kept)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def read_spool(begun_path: Path) -> list[Series]:
    """The series a cell had logged when its kernel last wrote them (empty if none)."""
    try:
        data = begun_path.with_suffix(SPOOL_SUFFIX).read_bytes()
    except OSError:
        return []
    found: dict[str, Series] = {}
    offset = 0
    while offset + _FRAME_LENGTH.size <= len(data):
        (length,) = _FRAME_LENGTH.unpack_from(data, offset)
        frame = data[offset + _FRAME_LENGTH.size : offset + _FRAME_LENGTH.size + length]
        if len(frame) < length:  # cut short by the kernel's death
            break
        offset += _FRAME_LENGTH.size + length
        try:
            key, steps, values, timestamps = pickle.loads(frame)
        except Exception:
            break
        series = found.setdefault(key, Series(key))
        series.steps.frombytes(steps)
        series.values.frombytes(values)
        series.timestamps_ms.frombytes(timestamps)
    return list(found.values())


def _try_lock(folder: Path):
    """An open, exclusively locked handle on ``folder``'s lock file, or None if held elsewhere
    or gone (another kernel recovered the folder and removed it since it was listed).
    """
    try:
        handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held open as the lock itself
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


# Beside the kernels' folders: the pushes `nbtrack push` kept for `nbtrack sync` (durable/pushes).
PUSHES = "pushes"


def kernel_folders(root: Path | None = None) -> list[Path]:
    """Every kernel's journal folder under the root, oldest first by name (not the hidden ones
    new kernels are still setting up, nor the kept pushes' folder).
    """
    root = Path(root) if root is not None else journal_root()
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir()
                  if path.is_dir() and not path.name.startswith(".") and path.name != PUSHES)


def waiting_count(folder: Path) -> int:
    """How many records wait in a kernel's folder (read without taking it over)."""
    return sum(1 for _ in folder.glob("*.record"))
