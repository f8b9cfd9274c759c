"""The run index's file: one experiment's run summaries in a small SQLite database of nbtrack's own.

Where it lives: one ``runs-<hash>.sqlite`` per tracking URI (relative SQLite paths made absolute)
and experiment id, beside the store for a SQLite store (the ``.nbtrack-index`` folder next to its
database file), so every process that writes to the store and every process that reads it share
one index; for other stores (a team server) in ``$XDG_CACHE_HOME/nbtrack``, else
``~/.cache/nbtrack``. ``$NBTRACK_CACHE_DIR`` puts every index file in one folder instead.

Several processes share one file: the recorders of every kernel writing to the store add each run
as they finish it (:func:`record_runs`), so a store nbtrack has been writing to has its index
before anyone looks, and every board reading the store keeps it current from MLflow. Each row
carries a sequence number (SQLite's ``AUTOINCREMENT``, handed out under the write lock, so in
commit order), so a process reads only the rows added since the sequence it last saw
(:meth:`IndexFile.rows_since`).

A new process loads what ranking reads of every run (run id, start time, status, deleted,
metrics) from one *snapshot*: those values of every row up to a sequence, in ``search_runs``'s
natural order, in one ``marshal`` blob (a tenth of the time of reading and decoding each row,
then sorting them); the rows added since are read one by one and put in their place. The rest of
a run's summary stays in the file until asked for (:meth:`IndexFile.texts`). A look's write
(:meth:`IndexFile.save`) makes the snapshot again when rows were deleted (the snapshot would
bring them back) or more than :data:`SNAPSHOT_LAG` rows came since it.

A file made for another schema, store or experiment is refused with :class:`IndexUnusable`; the
caller discards it and starts again from MLflow, which loses nothing.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import json
import marshal
import os
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path

from nbtrack.config import CACHE_ENV, cache_dir
from nbtrack.store.kernel_state import absolute_tracking_uri
from nbtrack.store.summaries import RunSummary, in_natural_order

SCHEMA_VERSION = 4
# marshal's format may change between Pythons: a snapshot another one wrote is made again.
SNAPSHOT_FORMAT = f"marshal {marshal.version} python {sys.version_info[0]}.{sys.version_info[1]}"
SNAPSHOT_LAG = 1_000  # rows newer than the snapshot a load reads one by one, at most
INSERT_AT_MOST = 2_000  # newer rows put in their place one by one; more: the whole list sorted
IDS_PER_QUERY = 500  # run ids per "run_id IN (...)" (SQLite allows 999 parameters at least)
INDEX_FOLDER = ".nbtrack-index"  # beside a SQLite store's database file
IDENTITY_KEYS = ("schema_version", "tracking_uri", "experiment_id")


def index_path(tracking_uri: str, experiment_id: str, folder: Path | None = None) -> Path:
    """The index file of one experiment of one store."""
    uri = absolute_tracking_uri(tracking_uri)
    key = hashlib.sha256(f"{uri}\0{experiment_id}".encode()).hexdigest()
    if folder is None:
        database = sqlite_file(uri)
        folder = (database.parent / INDEX_FOLDER if database is not None
                  and not os.environ.get(CACHE_ENV) else cache_dir())
    return folder / f"runs-{key[:20]}.sqlite"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite store's URI, else None."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def record_runs(tracking_uri: str, runs: list) -> None:
    """Put runs just written (``mlflow.entities.Run``) into their experiments' index files,
    creating the files; the recorder calls this as it finishes each run.
    """
    by_experiment: dict[str, list[RunSummary]] = {}
    for run in runs:
        by_experiment.setdefault(run.info.experiment_id, []).append(RunSummary.from_run(run))
    uri = absolute_tracking_uri(tracking_uri)
    for experiment_id, summaries in by_experiment.items():
        file = IndexFile(index_path(uri, experiment_id), uri, experiment_id)
        try:
            file.add(summaries)
        except (sqlite3.DatabaseError, IndexUnusable):  # another schema's, or broken: anew
            file.discard()
            file.add(summaries)


class IndexUnusable(Exception):
    """The index file cannot be used as it is (corrupt, other schema, other store): rebuild it."""


class IndexFile:
    """The file at ``path``, made for one experiment (``experiment_id``) of one store."""

    def __init__(self, path: Path, tracking_uri: str, experiment_id: str):
        self.path = path
        self.identity = {"schema_version": str(SCHEMA_VERSION), "tracking_uri": tracking_uri,
                         "experiment_id": experiment_id}
        self.broken_snapshot = False  # the last load found one it could not read: made again

    def exists(self) -> bool:
        """Whether the file is there."""
        return self.path.exists()

    @contextmanager
    def _open(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection to the checked file, inside one transaction (taking the write lock at
        once when ``write``, so a read-then-write inside it sees no other writer in between).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                if self._check(connection, write):
                    yield connection
                else:
                    yield None  # a file another process is creating: nothing in it yet
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        finally:
            connection.close()

    def _check(self, connection: sqlite3.Connection, write: bool) -> bool:
        """True when the file has this index's tables (created here when writing)."""
        tables = {name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            if not write:
                return False
            connection.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            # light: what ranking reads, decoded at load; summary: the rest, decoded when asked
            connection.execute("CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                               "run_id TEXT NOT NULL UNIQUE, light TEXT NOT NULL, "
                               "summary TEXT NOT NULL)")
            # one row: the light values of every run up to seq, in natural order (see above)
            connection.execute("CREATE TABLE snapshot (seq INTEGER NOT NULL, "
                               "format TEXT NOT NULL, data BLOB NOT NULL)")
            connection.executemany("INSERT INTO meta VALUES (?, ?)", self.identity.items())
            return True
        meta = dict(connection.execute(
            "SELECT key, value FROM meta WHERE key IN (?, ?, ?)", IDENTITY_KEYS))
        if meta != self.identity or not {"runs", "snapshot"} <= tables:
            raise IndexUnusable(f"made for {meta}")
        return True

    # -- reading -----------------------------------------------------------------------------

    def load(self) -> tuple[dict, list[tuple], int]:
        """What a new process needs: the file's meta values, every run's light values
        ``(run_id, start_time, status, deleted, metrics)`` in natural order, the last sequence.
        The rest of each run's summary stays in the file (:meth:`texts`).
        """
        with self._open() as connection:
            if connection is None:
                return {}, [], 0
            meta = dict(connection.execute("SELECT key, value FROM meta"))
            with without_gc():  # a whole file: many objects
                lights, since, self.broken_snapshot = _snapshot(connection)
                newer, seq = _lights(connection, since)
                return meta, _placed(lights, newer), seq

    def rows_since(self, seq: int) -> tuple[list[tuple], int]:
        """The rows added after ``seq`` as ``(light values, summary text)``, and the last
        sequence now.
        """
        if not self.path.exists():
            return [], seq
        with self._open() as connection:
            return _rows(connection, seq) if connection is not None else ([], seq)

    def texts(self, run_ids: list[str]) -> dict[str, str]:
        """The summaries' texts of these runs (JSON), of those the file holds."""
        found: dict[str, str] = {}
        try:
            if not self.path.exists():
                return found
            with self._open() as connection:
                for start in range(0, len(run_ids) if connection is not None else 0,
                                   IDS_PER_QUERY):
                    chunk = run_ids[start:start + IDS_PER_QUERY]
                    found.update(connection.execute(
                        f"SELECT run_id, summary FROM runs WHERE run_id IN "
                        f"({', '.join('?' * len(chunk))})", chunk))
        except (sqlite3.DatabaseError, IndexUnusable, OSError):
            pass  # a file gone or broken since the load: the runs asked for go without
        return found

    # -- writing -----------------------------------------------------------------------------

    def add(self, summaries: Iterable) -> None:
        """Upsert summaries (a recorder's runs), each with a new sequence number."""
        with self._open(write=True) as connection:
            _upsert(connection, summaries)

    def save(self, summaries: Iterable, since: int, meta: dict, removed: Iterable[str] = (),
             keep_only: set[str] | None = None) -> tuple[list[tuple], int]:
        """A look's write: first the rows other processes added after ``since``
        (returned, for the caller to merge before its own rows replace them), then ``summaries``
        upserted, ``removed`` run ids deleted, every row not in ``keep_only`` (when given) deleted,
        and ``meta`` stored. Returns those rows and the last sequence after the write.
        """
        with self._open(write=True) as connection:
            others, _ = _rows(connection, since)
            if keep_only is not None:
                keep_only = keep_only | {light[0] for light, _ in others}
                held = [run_id for (run_id,) in connection.execute("SELECT run_id FROM runs")]
                removed = [*removed, *(run_id for run_id in held if run_id not in keep_only)]
            _upsert(connection, summaries)
            deleted = connection.executemany("DELETE FROM runs WHERE run_id = ?",
                                             [(run_id,) for run_id in removed]).rowcount
            connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                   [(k, None if v is None else str(v)) for k, v in meta.items()])
            (seq,) = connection.execute("SELECT COALESCE(MAX(seq), 0) FROM runs").fetchone()
            if deleted > 0 or self.broken_snapshot or _snapshot_lags(connection):
                _write_snapshot(connection, removed)
                self.broken_snapshot = False
        return others, seq

    def discard(self) -> None:
        """Delete the file (with SQLite's side files)."""
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def _rows(connection: sqlite3.Connection, since: int) -> tuple[list[tuple], int]:
    """The rows after ``since``: ``(light values, summary text)`` each."""
    rows = connection.execute("SELECT seq, run_id, light, summary FROM runs WHERE seq > ? "
                              "ORDER BY seq", (since,)).fetchall()
    if not rows:
        return [], since
    lights = _decoded(rows)
    return [(light, row[3]) for row, light in zip(rows, lights, strict=True)], rows[-1][0]


def _lights(connection: sqlite3.Connection, since: int) -> tuple[list[tuple], int]:
    """The light values of the rows after ``since``, and the last sequence."""
    rows = connection.execute("SELECT seq, run_id, light FROM runs WHERE seq > ? ORDER BY seq",
                              (since,)).fetchall()
    return (_decoded(rows), rows[-1][0]) if rows else ([], since)


def _decoded(rows: list[tuple]) -> list[tuple]:
    # One document: the decoder then shares the key strings ("val_auc", ...) of every run,
    # where a loads() a run would keep a copy of each in each run.
    lights = json.loads("[" + ",".join(row[2] for row in rows) + "]")
    return [(row[1], *light) for row, light in zip(rows, lights, strict=True)]


def _natural_key(light: tuple) -> tuple:
    return -(light[1] or 0), light[0]


def _placed(lights: list[tuple], newer: list[tuple]) -> list[tuple]:
    """The snapshot's ``lights`` (natural order) with the ``newer`` rows' values in their place."""
    if not newer:
        return lights
    replaced = {light[0] for light in newer}
    kept = [light for light in lights if light[0] not in replaced] if lights else []
    if len(newer) > INSERT_AT_MOST:
        return in_natural_order(kept + newer, itemgetter(1), itemgetter(0))
    for light in newer:
        bisect.insort(kept, light, key=_natural_key)
    return kept


def _snapshot(connection: sqlite3.Connection) -> tuple[list[tuple], int, bool]:
    """The snapshot's light values, the sequence it holds the rows up to, and whether it is
    broken; ``[], 0`` when there is none this Python reads (every row is then read one by one).
    """
    found = connection.execute("SELECT seq, format, data FROM snapshot").fetchone()
    if found is None or found[1] != SNAPSHOT_FORMAT:
        return [], 0, False
    try:
        return list(zip(*marshal.loads(found[2]), strict=True)), found[0], False
    except (EOFError, ValueError, TypeError):  # the rows are still there
        return [], 0, True


def _snapshot_lags(connection: sqlite3.Connection) -> bool:
    """True when the snapshot is missing, of another Python's, or over SNAPSHOT_LAG rows old."""
    found = connection.execute("SELECT seq, format FROM snapshot").fetchone()
    if found is None or found[1] != SNAPSHOT_FORMAT:
        return True
    (newer,) = connection.execute("SELECT COUNT(*) FROM runs WHERE seq > ?",
                                  (found[0],)).fetchone()
    return newer > SNAPSHOT_LAG


def _write_snapshot(connection: sqlite3.Connection, removed: Iterable[str]) -> None:
    """The snapshot made again: the one there (when readable) without the ``removed`` runs,
    with the rows written since in their place; else every row, sorted.
    """
    with without_gc():
        lights, since, _ = _snapshot(connection)
        gone = set(removed)
        if gone and lights:
            lights = [light for light in lights if light[0] not in gone]
        newer, seq = _lights(connection, since)
        ordered = _placed(lights, newer)
        columns = [list(column) for column in zip(*ordered, strict=True)] or [[], [], [], [], []]
        # One string object for each status: marshal then writes each once.
        columns[2] = [sys.intern(status) if isinstance(status, str) else status
                      for status in columns[2]]
        data = marshal.dumps(columns)
    connection.execute("DELETE FROM snapshot")
    connection.execute("INSERT INTO snapshot VALUES (?, ?, ?)", (seq, SNAPSHOT_FORMAT, data))


@contextmanager
def without_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off while a large load builds objects without cycles:
    each collection walks every object made so far, so a load of 100,000 runs spent about half
    its time in them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _upsert(connection: sqlite3.Connection, summaries: Iterable) -> None:
    # REPLACE deletes the run's old row and inserts a new one: a new, higher sequence number.
    connection.executemany(
        "INSERT OR REPLACE INTO runs (run_id, light, summary) VALUES (?, ?, ?)",
        [(s.run_id, json.dumps(s.light()[1:], separators=(",", ":")), s.to_json())
         for s in summaries])
