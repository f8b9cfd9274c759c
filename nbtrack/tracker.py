"""One kernel's tracking: begin a tracked cell, collect what it logs, end it as a record.

Plain Python, no IPython: the magics module calls :meth:`Tracker.begin` before a tracked cell runs
and :meth:`Tracker.end` after, handing over the namespace and the cell's exception.
"""

from __future__ import annotations

import hashlib
import os
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbtrack import display
from nbtrack.capture import datasets, estimators, lineage, sanitize
from nbtrack.capture.figures import FigureCollector
from nbtrack.capture.secrets import Redactor, is_secret_name
from nbtrack.capture.source import CellSyntax, analyze
from nbtrack.capture.values import flatten_param, metric_number, param_text
from nbtrack.config import Nbtrack, resolve_experiment
from nbtrack.display import short_error as _short
from nbtrack.record import (
    FAILED,
    FINISHED,
    KILLED,
    Artifact,
    CellRecord,
    ModelCapture,
    RunOutcome,
    Series,
)
from nbtrack.threads import warnings_dropped

if TYPE_CHECKING:
    from nbtrack.durable.journal import SeriesSpool

# How often a running cell's nbtrack.log_metric points are appended to the journal.
SPOOL_INTERVAL_MS = 1000
# git answers in milliseconds; a repository on a hung network mount must not hold the cell.
GIT_WAIT_SECONDS = 5
# Names IPython itself binds in the user namespace: never params, metrics or data.
_SHELL_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})


def _is_shell_name(name: str) -> bool:
    return name in _SHELL_NAMES or name.startswith("_")


def now_ms() -> int:
    """Milliseconds since the epoch, as MLflow stores times."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class TrackOptions:
    """What ``%%track`` was asked to do (see ``%%track?``)."""

    experiment: str | None = None
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    figures: bool = True
    model: bool = True
    register: str | None = None


@dataclass(frozen=True)
class CellContext:
    """What the shell knows about the cell about to run."""

    raw_source: str
    code: str  # the cell body as Python (IPython syntax already transformed)
    execution_count: int | None = None
    cell_id: str | None = None
    history: tuple[tuple[int, str], ...] = ()  # earlier inputs of this kernel, in order
    cwd: Path = field(default_factory=Path.cwd)


@dataclass
class _ActiveCell:
    """The tracked cell that is running now, and what it has logged so far."""

    cell: CellContext
    options: TrackOptions
    syntax: CellSyntax
    experiment: str
    run_name: str
    notebook: Path | None
    started_ms: int
    read_params: dict[str, Any]
    names_before: frozenset[str]
    figures: FigureCollector
    run_id: str | None = None
    tracking_uri: str | None = None
    begun_path: Path | None = None
    git: Future | None = None  # the repository's state, read on a thread while the cell runs
    spool: SeriesSpool | None = None  # the series so far, on disk, for a kernel that dies
    spooled_ms: int = 0  # when the series were last spooled (or the cell started)
    spool_failed: bool = False
    explicit_params: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class Tracker:
    """Tracks the cells of one kernel.

    Parameters
    ----------
    settings
        The :class:`~nbtrack.config.Nbtrack` configurable holding defaults.
    recorder
        Writes records to MLflow; created on first use when not given.
    environ
        The environment (``os.environ``): notebook path and secrets are read from it.

    """

    def __init__(self, settings: Nbtrack | None = None, recorder: Any = None, environ=None):
        self.settings = settings or Nbtrack()
        self._recorder = recorder
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.active: _ActiveCell | None = None
        self.last_run_id: str | None = None
        self.configured_experiment: str = ""
        self.unrecorded: list[CellRecord] = []
        self._previous_runs: dict[str, str] = {}
        self._writer = None
        self._recorders: dict[str, Any] = {}
        self._recovery = None
        self._store_open = None
        # Called after each tracked cell (boards refresh themselves); weak, so a board that is
        # gone from the notebook does not keep being refreshed.
        self._after_run: list = []

    @property
    def recorder(self):
        """The recorder, imported on first use so that loading nbtrack stays fast."""
        if self._recorder is None:
            from nbtrack.store.recorder import Recorder

            self._recorder = Recorder()
        return self._recorder

    def experiment_for(self, option: str | None, cwd: Path, notebook: Path | None = None) -> str:
        """The experiment a cell with ``-e option`` in ``cwd`` would write to."""
        configured = self.configured_experiment or self.settings.experiment
        folder = notebook.parent if notebook is not None else cwd
        return resolve_experiment(option, configured, folder)

    # -- the cell's life ---------------------------------------------------------------------

    def begin(self, cell: CellContext, options: TrackOptions, namespace: Mapping[str, Any]) -> None:
        """Start tracking a cell that is about to run in ``namespace``."""
        # What nbtrack's work warns (reading the user's objects, MLflow) is not the cell's.
        with warnings_dropped():
            self._begin(cell, options, namespace)

    def _begin(self, cell: CellContext, options: TrackOptions, namespace: Mapping[str, Any]) -> None:
        if self.active is not None:  # a cell that never ended (its post hook did not run)
            self.end(namespace, None)
        syntax = analyze(cell.code)
        notebook = lineage.notebook_path(self.environ, namespace, cell.cwd)
        collector = FigureCollector()
        collector.start()
        active = _ActiveCell(
            cell=cell,
            options=options,
            syntax=syntax,
            experiment=self.experiment_for(options.experiment, cell.cwd, notebook),
            run_name=options.name or _default_run_name(notebook, cell.execution_count),
            notebook=notebook,
            started_ms=now_ms(),
            read_params=_read_params(syntax, namespace, self.settings.max_collection_items),
            names_before=frozenset(namespace),
            figures=collector,
        )
        active.spooled_ms = active.started_ms
        try:
            active.git = lineage.git_state_soon(notebook.parent if notebook else cell.cwd)
        except RuntimeError:  # no new threads while the interpreter shuts down
            active.git = None
        self.active = active
        batch_execution = bool(self.environ.get("NBTRACK_EXECUTION_ID"))
        if (syntax.uses_mlflow and not syntax.starts_own_run) or batch_execution:
            # The cell calls mlflow.log_* itself: open the run now so those calls land in it.
            # In a batch execution too: a kernel that dies mid-cell then leaves a run that
            # `nbtrack run` can end as KILLED, instead of no run at all.
            try:
                active.run_id = self.recorder.open_run(
                    active.experiment, active.run_name, active.started_ms,
                    tags=self._opening_tags(active),
                    params=sanitize.params(
                        {k: param_text(v) for k, v in self._injected_parameters(display.warn).items()},
                        display.warn),
                )
            except Exception as error:
                consequence = ("the cell's own mlflow calls go to MLflow's default run"
                               if syntax.uses_mlflow else "it is recorded when the cell ends")
                display.warn(f"could not open run '{active.run_name}' before the cell "
                             f"({_short(error)}); {consequence}.")
        try:
            self._note_begun(active)
        except Exception as error:
            display.warn(f"cell not noted in the journal ({_short(error)}); should the kernel die "
                         "during it, no run will say so.")

    def _note_begun(self, active: _ActiveCell) -> None:
        """Journal the cell's start, so a kernel dying during it still leaves a (KILLED) run."""
        from nbtrack.durable.writer import begun_facts

        active.tracking_uri = self.tracking_uri()
        redactor = Redactor()
        redactor.add_from_environment(self.environ)
        redactor.add_from_source(active.cell.raw_source)
        facts = begun_facts(active.tracking_uri, active.experiment, active.run_name,
                            active.started_ms, self._opening_tags(active),
                            redactor.redact(active.cell.raw_source), active.run_id)
        active.begun_path = self.writer.journal.begun(active.started_ms, facts)

    def preload(self) -> None:
        """Import MLflow on a background thread (it takes seconds), so the first tracked cell
        does not wait for it and loading the extension stays instant. The thread holds the gate
        (:mod:`nbtrack.threads`): a cell that starts meanwhile waits for the import to end.
        """
        from nbtrack import threads
        from nbtrack.store.recorder import quiet_mlflow_threads

        def load() -> None:
            quiet_mlflow_threads()  # its import warnings would land in the user's cell
            try:
                import mlflow  # noqa: F401
            except Exception as error:  # the first tracked cell needs it, and says so again
                display.warn(f"MLflow could not be imported: {_short(error)}")
            quiet_mlflow_threads()

        threads.start("import-mlflow", load, gated=True)

    def _opening_tags(self, active: _ActiveCell) -> dict[str, str]:
        """Tags a run gets when it is opened before its cell runs: enough to find and explain
        it should the kernel die before the cell ends.
        """
        notebook = str(active.notebook) if active.notebook else "<ipython>"
        tags = {"mlflow.source.type": "NOTEBOOK", "mlflow.source.name": notebook,
                "nbtrack.notebook": notebook}
        for variable, tag in (("NBTRACK_SWEEP_ID", "nbtrack.sweep"),
                              ("NBTRACK_EXECUTION_ID", "nbtrack.execution"),
                              ("NBTRACK_BATCH", "nbtrack.batch")):
            if self.environ.get(variable):
                tags[tag] = self.environ[variable]
        return tags

    def end(self, namespace: Mapping[str, Any], error: BaseException | None) -> RunOutcome | None:
        """Finish the running tracked cell: capture, journal, summarize. Never raises.

        The record is on disk when this returns; the store gets it from the background writer.
        Returns the outcome when the record was written before returning (batch executions and
        ``--register`` wait for the store), else None.
        """
        active, self.active = self.active, None
        if active is None:
            return None
        if active.spool is not None:
            active.spool.close()
        ended_ms = now_ms()
        with warnings_dropped():  # what reading the cell's objects warns is not the cell's
            try:
                record = self._build_record(active, namespace, error, ended_ms)
            except Exception as capture_error:
                active.problems.append(
                    f"could not capture the cell's values ({_short(capture_error)}); "
                    "recording its source and status only."
                )
                record = self._minimal_record(active, error, ended_ms)
            if record.run_id is not None:
                self._end_fluent_run(record)
        for problem in active.problems:
            display.warn(problem)
        outcome = None
        try:
            outcome = self._submit(record, active)
        except Exception as error:  # a bug of ours: the cell must not pay for it
            display.warn(f"run '{record.run_name}' not recorded: {_short(error)}")
            self.unrecorded.append(record)
        if self.settings.summary:
            refusal = self._writer.refusal if self._writer is not None else None
            display.show_summary(record, outcome, queued_because=refusal if outcome is None else None)
        return outcome

    def _submit(self, record: CellRecord, active: _ActiveCell) -> RunOutcome | None:
        from nbtrack.durable.journal import Entry

        writer = self.writer
        uri = active.tracking_uri or self.tracking_uri()
        try:
            entry = writer.journal.keep(record, uri)
        except Exception as error:  # disk full, folder not writable: write from memory
            import pickle

            display.warn(f"run '{record.run_name}' could not be written to the journal in "
                         f"{writer.journal.folder} ({_short(error)}); it is recorded from memory "
                         "and lost if this kernel dies first.")
            entry = Entry(None, uri, pickle.dumps({"tracking_uri": uri, "record": record}))
        writer.journal.ended(active.begun_path)
        from nbtrack.threads import GATE

        with GATE.lent():  # the store is opened on a thread that needs the gate
            self._store_open.wait(timeout=self.settings.wait_seconds)
        writer.submit(entry)
        if not (self._waits_for_store(record)):
            return None
        if not writer.flush(timeout=self.settings.wait_seconds):
            return None
        return writer.outcomes.pop(entry.path, None)

    def _waits_for_store(self, record: CellRecord) -> bool:
        """Whether the cell waits for its run to reach the store before it returns: in batch
        executions (the notebook's outputs and the store then agree when the execution ends)
        and for ``--register`` (the summary names the new version).
        """
        if record.register_as or not self.settings.background:
            return True
        if self.environ.get("NBTRACK_WAIT_FOR_STORE", "").lower() in ("1", "true", "yes"):
            return True
        return bool(self.environ.get("NBTRACK_EXECUTION_ID") or lineage.batch_runner(self.environ))

    def _end_fluent_run(self, record: CellRecord) -> None:
        """The run opened before the cell is MLflow's active run in this thread: end it here, so
        the user's next ``mlflow.start_run()`` is not nested in it. The writer finishes it.
        """
        import sys

        mlflow = sys.modules.get("mlflow")
        if mlflow is None:
            return
        try:
            run = mlflow.active_run()
            if run is not None and run.info.run_id == record.run_id:
                from nbtrack.store.recorder import leave_active_run

                leave_active_run(record.run_id)
        except Exception as error:
            display.warn(f"run '{record.run_name}' left active in MLflow: {_short(error)}")

    # -- the store, in the background --------------------------------------------------------

    def tracking_uri(self) -> str:
        """The store tracked cells write to now (a relative SQLite path made absolute)."""
        import sys

        from nbtrack.store.query import absolute_tracking_uri

        mlflow = sys.modules.get("mlflow")
        if mlflow is None or getattr(mlflow.__spec__, "_initializing", False):
            # MLflow is still being imported in the background (nobody can have called its
            # set_tracking_uri yet): the environment says where, without waiting for it.
            configured = self.environ.get("MLFLOW_TRACKING_URI")
            if configured:
                return absolute_tracking_uri(configured)
        return absolute_tracking_uri()

    def recorder_for(self, tracking_uri: str):
        """The recorder writing to ``tracking_uri`` (one per store, made on first use)."""
        recorder = self._recorders.get(tracking_uri)
        if recorder is None:
            if self._recorder is not None and self._recorder.tracking_uri == tracking_uri:
                recorder = self._recorder
            else:
                from nbtrack.store.recorder import Recorder

                recorder = Recorder(tracking_uri)
            self._recorders[tracking_uri] = recorder
        return recorder

    @property
    def writer(self):
        """The background writer of this kernel, with its journal (made on first use)."""
        if self._writer is None:
            import atexit

            from nbtrack.durable.journal import KernelJournal
            from nbtrack.durable.writer import BackgroundWriter

            try:
                journal = KernelJournal.create()
            except OSError as error:  # e.g. a read-only home: keep journaling, somewhere else
                import tempfile

                fallback = Path(tempfile.gettempdir()) / f"nbtrack-journal-{os.getuid()}"
                journal = KernelJournal.create(fallback)
                display.warn(f"the journal folder is not writable ({_short(error)}); runs are "
                             f"journaled in {fallback} instead (set NBTRACK_JOURNAL_DIR).")
            self._writer = BackgroundWriter(journal, self.recorder_for, on_written=self._written,
                                            prepare=self._with_supersedes)
            atexit.register(self.close)
            self._open_store(self.tracking_uri())
            self._start_recovery(journal.folder)
        return self._writer

    def _open_store(self, tracking_uri: str) -> None:
        """Open the store on a thread while the first tracked cell runs: a new SQLite store
        creates its tables then, which takes seconds and must not be cut short by a kernel
        that exits right after its last cell (see :meth:`end`). Opening imports (the store's
        SQLAlchemy dialect, alembic's migrations), so the thread holds the gate.
        """
        import threading

        from nbtrack import threads

        self._store_open = threading.Event()

        def run() -> None:
            try:
                from nbtrack.store.recorder import quiet_mlflow

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
        from nbtrack import threads
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

        self._recovery = threads.start("recovery", run)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every tracked cell's run is in the store; False if ``timeout`` ran out."""
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

    def _with_supersedes(self, record: CellRecord) -> CellRecord:
        """Tag a re-run of a cell with the run it supersedes (the cell's previous run here)."""
        previous = self._previous_runs.get(record.tags.get("nbtrack.cell", ""))
        if not previous or "nbtrack.supersedes" in record.tags:
            return record
        return replace(record, tags={**record.tags, "nbtrack.supersedes": previous})

    def _written(self, record: CellRecord, outcome: RunOutcome) -> None:
        """The writer put a run in the store (called on its thread)."""
        self.last_run_id = outcome.run_id
        self._previous_runs[record.tags.get("nbtrack.cell", "")] = outcome.run_id
        from nbtrack.store import index as run_index

        run_index.note_written(outcome.tracking_uri, outcome.run_id)
        self._notify_after_run()

    def on_run_recorded(self, method) -> None:
        """Call the bound ``method`` after each tracked cell, while its object lives."""
        import weakref

        self._after_run.append(weakref.WeakMethod(method))

    def _notify_after_run(self) -> None:
        alive = []
        for reference in self._after_run:
            method = reference()
            if method is None:
                continue
            alive.append(reference)
            try:
                method()
            except Exception as error:  # a board that cannot refresh must not fail the cell
                display.warn(f"leaderboard not refreshed: {_short(error)}")
        self._after_run = alive

    # -- what the cell's code logs explicitly ------------------------------------------------

    def log_metric(self, key: str, value: Any, step: int | None = None) -> None:
        """Add one point to a metric series of the running tracked cell."""
        active = self.active
        if active is None:
            self._require_active(f"log_metric({key!r})")
            return
        kind = type(value)
        if kind is float or kind is int:  # the common case, kept short: loops call this a lot
            number = float(value)
        else:
            number = metric_number(value)
            if number is None:
                display.warn(f"metric {key!r} not logged: {kind.__name__} is not a number.")
                return
        series = active.series.get(key)
        if series is None:
            series = active.series[key] = Series(str(key))
        timestamp_ms = int(time.time() * 1000)
        series.add(number, len(series) if step is None else int(step), timestamp_ms)
        if timestamp_ms - active.spooled_ms >= SPOOL_INTERVAL_MS:
            self._spool(active, timestamp_ms)

    def _spool(self, active: _ActiveCell, now: int) -> None:
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

    def log_param(self, key: str, value: Any) -> None:
        """Record a param for the running tracked cell; it wins over a detected one."""
        active = self._require_active(f"log_param({key!r})")
        if active is None:
            return
        key = str(key)
        try:
            param_text(value)
        except Exception as error:  # e.g. a __str__ that raises
            display.warn(f"param {key!r} not logged: its value cannot be written as text "
                         f"({_short(error)}).")
            return
        if key in active.explicit_params and param_text(active.explicit_params[key]) != param_text(
            value
        ):
            display.warn(
                f"param {key!r} was already logged as {param_text(active.explicit_params[key])!r} "
                f"in this run; keeping that, not {param_text(value)!r}."
            )
            return
        active.explicit_params[key] = value

    def log_figure(self, figure: Any, name: str | None = None) -> None:
        """Log a matplotlib figure with the running tracked cell (as it looks now)."""
        active = self._require_active("log_figure")
        if active is not None:
            active.figures.add(figure, label=name)

    def figure_shown(self, figure: Any, png: bytes | None = None) -> None:
        """Called when the shell displays a matplotlib figure (``png``: as the display drew it)."""
        active = self.active
        if active is not None and active.options.figures and self.settings.figures:
            active.figures.add(figure, png=png)

    def _require_active(self, call: str) -> _ActiveCell | None:
        if self.active is None:
            display.warn(f"nbtrack.{call} outside a %%track cell: not recorded.")
        return self.active

    # -- building the record -----------------------------------------------------------------

    def _build_record(
        self,
        active: _ActiveCell,
        namespace: Mapping[str, Any],
        error: BaseException | None,
        ended_ms: int,
    ) -> CellRecord:
        warn = active.problems.append
        options, syntax, settings = active.options, active.syntax, self.settings
        redactor = self._redactor(active, namespace)

        params = self._params(active, namespace, warn)
        params_text = {}
        for key, value in params.items():
            try:
                params_text[key] = redactor.redact(param_text(value))
            except Exception as error:  # e.g. a __str__ that raises
                warn(f"param {key!r} not logged: its value cannot be written as text "
                     f"({_short(error)}).")
        metrics = self._metrics(active, namespace, warn)

        models: list[ModelCapture] = []
        if options.model and settings.models:
            models = self._models(active, namespace, warn)

        data: list = []
        if settings.datasets:
            pairs = [(n, "read") for n in syntax.read_names if n in active.names_before]
            pairs += [(n, "bound") for n in syntax.bound_names]
            data, skipped = datasets.collect(pairs, namespace)
            if skipped:
                warn(f"{skipped} more DataFrames/arrays not logged as datasets "
                     f"(at most {datasets.MAX_DATASETS} a run).")

        if options.figures and settings.figures:
            active.figures.finish()
        problems = active.figures.problems
        active.problems.extend(problems)

        artifacts = [
            Artifact("cell/source.py", redactor.redact(active.cell.raw_source).encode()),
            *active.figures.artifacts(),
        ]
        if settings.history:
            entries = [*active.cell.history, (active.cell.execution_count or 0, active.cell.raw_source)]
            artifacts.append(
                Artifact("lineage/history.py", lineage.history_text(entries, redactor).encode())
            )
        snapshot = None
        if active.notebook is not None and (settings.notebook_snapshot or settings.history):
            snapshot = lineage.notebook_snapshot(active.notebook, redactor)
        if settings.notebook_snapshot and snapshot is not None:
            artifacts.append(Artifact(f"lineage/{active.notebook.name}", snapshot))

        status = _status(error)
        tags = self._tags(active, error, redactor)
        if settings.history:
            hidden = _hidden_state(active, redactor, snapshot, warn)
            if hidden:
                tags["nbtrack.hidden_state"] = hidden
        if error is not None and status == FAILED:
            trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            artifacts.append(Artifact("error/traceback.txt", redactor.redact(trace).encode()))

        series = tuple(sanitize.series(list(active.series.values()), warn))
        return CellRecord(
            experiment=active.experiment,
            run_name=active.run_name,
            start_time_ms=active.started_ms,
            end_time_ms=ended_ms,
            status=status,
            params=sanitize.params(params_text, warn),
            metrics=sanitize.metrics(metrics, warn),
            series=series,
            tags=sanitize.tags(tags, warn),
            artifacts=tuple(artifacts),
            models=tuple(models),
            datasets=tuple(data),
            register_as=options.register,
            run_id=active.run_id,
        )

    def _minimal_record(
        self, active: _ActiveCell, error: BaseException | None, ended_ms: int
    ) -> CellRecord:
        redactor = Redactor()
        redactor.add_from_environment(self.environ)
        redactor.add_from_source(active.cell.raw_source)
        return CellRecord(
            experiment=active.experiment,
            run_name=active.run_name,
            start_time_ms=active.started_ms,
            end_time_ms=ended_ms,
            status=_status(error),
            tags={"mlflow.source.type": "NOTEBOOK", "nbtrack.capture": "partial"},
            artifacts=(Artifact("cell/source.py", redactor.redact(active.cell.raw_source).encode()),),
            run_id=active.run_id,
        )

    def _redactor(self, active: _ActiveCell, namespace: Mapping[str, Any]) -> Redactor:
        redactor = Redactor()
        redactor.add_from_environment(self.environ)
        redactor.add_from_namespace(namespace)
        redactor.add_from_source(active.cell.code)
        for _, source in active.cell.history:
            redactor.add_from_source(source)
        return redactor

    def _params(self, active: _ActiveCell, namespace: Mapping[str, Any], warn) -> dict[str, Any]:
        limit = self.settings.max_collection_items
        params: dict[str, Any] = {}
        if active.options.params is not None:
            for name in active.options.params:
                if name not in namespace:
                    warn(f"param {name!r} named in --params is not defined: not logged.")
                    continue
                flat = flatten_param(name, namespace[name], limit)
                if flat is None:
                    warn(f"param {name!r} not logged: a {type(namespace[name]).__name__} "
                         "is not a number, string, bool or small list/dict.")
                    continue
                params.update(flat)
        else:
            params.update(active.read_params)
            for name, literal in active.syntax.literal_bindings.items():
                if _is_shell_name(name):
                    continue
                flat = flatten_param(name, namespace.get(name, literal), limit)
                if flat is not None:
                    params.update(flat)
            for name in self._estimator_names(active):
                value = namespace.get(name)
                if estimators.is_estimator(value) and estimators.is_fitted(value):
                    params.update(estimators.hyperparameters(name, value))
        params.update(self._injected_parameters(warn))
        params = {k: v for k, v in params.items() if not is_secret_name(k)}
        for key, value in active.explicit_params.items():
            if key in params and param_text(params[key]) != param_text(value):
                warn(f"param {key!r} logged as {param_text(value)!r} by log_param; "
                     f"the cell's value {param_text(params[key])!r} is not logged.")
            params[key] = value
        return params

    def _injected_parameters(self, warn) -> dict[str, Any]:
        """Values ``nbtrack run -p/--grid`` injected into this execution's notebook."""
        text = self.environ.get("NBTRACK_PARAMETERS")
        if not text:
            return {}
        import json

        try:
            injected = json.loads(text)
        except ValueError:
            warn("NBTRACK_PARAMETERS is not JSON: the injected parameters are not logged.")
            return {}
        params: dict[str, Any] = {}
        for name, value in injected.items():
            params.update(flatten_param(name, value, self.settings.max_collection_items)
                          or {name: str(value)})
        return params

    def _metrics(self, active: _ActiveCell, namespace: Mapping[str, Any], warn) -> dict[str, float]:
        syntax = active.syntax
        if active.options.metrics is not None:
            names = list(active.options.metrics)
        else:
            names = [
                n for n in syntax.computed_names
                if n not in syntax.loop_variables and not _is_shell_name(n)
            ]
        metrics: dict[str, float] = {}
        for name in names:
            if is_secret_name(name):
                continue
            if name not in namespace:
                if active.options.metrics is not None:
                    warn(f"metric {name!r} named in --metrics is not defined: not logged.")
                continue
            number = metric_number(namespace[name])
            if number is None:
                if active.options.metrics is not None:
                    warn(f"metric {name!r} not logged: a {type(namespace[name]).__name__} "
                         "is not a number.")
                continue
            metrics[name] = number
        return metrics

    def _estimator_names(self, active: _ActiveCell) -> list[str]:
        names = [*active.syntax.bound_names, *active.syntax.fitted]
        return [n for n in dict.fromkeys(names) if not _is_shell_name(n)]

    def _models(self, active: _ActiveCell, namespace: Mapping[str, Any], warn) -> list[ModelCapture]:
        models = []
        for name in self._estimator_names(active):
            value = namespace.get(name)
            if estimators.is_estimator(value):
                if estimators.is_fitted(value):
                    data = namespace.get(active.syntax.fitted.get(name) or "")
                    models.append(ModelCapture(name, value, estimators.input_example(data)))
                continue
            kind = estimators.looks_like_model(value)
            if kind is not None:
                warn(f"model {name!r} ({kind}) not logged: nbtrack logs scikit-learn estimators; "
                     "log this one with the matching mlflow.<flavor>.log_model in the cell.")
        return models

    def _tags(self, active: _ActiveCell, error: BaseException | None, redactor: Redactor):
        cell = active.cell
        notebook = str(active.notebook) if active.notebook else "<ipython>"
        identity = cell.cell_id or "src-" + hashlib.sha1(
            f"{notebook}\n{cell.code.strip()}".encode()
        ).hexdigest()[:12]
        tags = {
            "mlflow.runName": active.run_name,
            "mlflow.source.type": "NOTEBOOK",
            "mlflow.source.name": notebook,
            "mlflow.user": lineage.current_user(self.environ),
            "mlflow.note.content": "```python\n" + redactor.redact(cell.raw_source) + "\n```",
            "nbtrack.notebook": notebook,
            "nbtrack.cell": identity,
        }
        if cell.cell_id:
            tags["nbtrack.cell_id"] = cell.cell_id
        if cell.execution_count is not None:
            tags["nbtrack.execution_count"] = str(cell.execution_count)
        git = _git_state(active)
        if "commit" in git:
            tags["mlflow.source.git.commit"] = git["commit"]
        for key in ("dirty", "branch"):
            if key in git:
                tags[f"nbtrack.git.{key}"] = git[key]
        for package, version in lineage.package_versions().items():
            tags[f"nbtrack.version.{package}"] = version
        runner = lineage.batch_runner(self.environ)
        if runner:
            tags["nbtrack.batch"] = runner
        for variable, tag in (("NBTRACK_SWEEP_ID", "nbtrack.sweep"),
                              ("NBTRACK_EXECUTION_ID", "nbtrack.execution")):
            if self.environ.get(variable):
                tags[tag] = self.environ[variable]
        if error is not None:
            tags["nbtrack.error"] = redactor.redact(
                f"{type(error).__name__}: {error}".strip().rstrip(":")
            )[:500]
        for key, value in active.options.tags.items():
            tags[key] = redactor.redact(value)
        return tags


def _git_state(active: _ActiveCell) -> dict[str, str]:
    """The git state read while the cell ran (or now, if that could not be started)."""
    if active.git is None:
        return lineage.git_state(active.notebook.parent if active.notebook else active.cell.cwd)
    try:
        return active.git.result(timeout=GIT_WAIT_SECONDS)
    except Exception:  # git hung or failed: the run goes without its commit
        return {}


def _status(error: BaseException | None) -> str:
    if error is None:
        return FINISHED
    if isinstance(error, KeyboardInterrupt):
        return KILLED
    return FAILED


def _hidden_state(active: _ActiveCell, redactor: Redactor, snapshot: bytes | None, warn) -> str:
    """What the kernel's history shows that the saved notebook does not (cells run out of order,
    edited after they ran, names no saved cell defines), one line; "" when nothing.
    """
    try:
        from nbtrack.capture import history
        from nbtrack.reproduce import saved_cells

        cell = active.cell
        entries = [history.Entry(count, redactor.redact_cached(source))
                   for count, source in (*cell.history, (cell.execution_count or 0, cell.raw_source))]
        return history.summary(history.find(entries, saved_cells(snapshot)))
    except Exception as error:  # a check of ours must not cost the cell its run
        warn(f"hidden notebook state not checked: {_short(error)}")
        return ""


def _default_run_name(notebook: Path | None, execution_count: int | None) -> str:
    stem = notebook.stem if notebook is not None else "ipython"
    return f"{stem} #{execution_count}" if execution_count is not None else stem


def _read_params(syntax: CellSyntax, namespace: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """Simple values of names the cell reads that earlier cells defined (e.g. a ``seed``)."""
    bound = set(syntax.bound_names) | syntax.loop_variables
    params: dict[str, Any] = {}
    for name in syntax.read_names:
        if name in bound or _is_shell_name(name) or name not in namespace:
            continue
        flat = flatten_param(name, namespace[name], limit)
        if flat is not None:
            params.update(flat)
    return params


# The tracker of the kernel nbtrack is loaded into; nbtrack.log_metric & co. log through it.
ACTIVE: dict[str, Tracker] = {}


def current() -> Tracker | None:
    """The tracker of the running kernel, or None when the extension is not loaded."""
    return ACTIVE.get("tracker")


def set_current(tracker: Tracker | None) -> None:
    """Install (or, with None, remove) the kernel's tracker."""
    if tracker is None:
        ACTIVE.pop("tracker", None)
    else:
        ACTIVE["tracker"] = tracker

