"""One kernel's tracking: begin a tracked cell, collect what it logs, end it as a record.

Plain Python, no IPython: the IPython layer calls :meth:`Tracker.begin` before a tracked cell runs
and :meth:`Tracker.end` after, handing over the namespace and the cell's exception. The tracker
orchestrates: what a cell yields is worked out in :mod:`nbtrack.capture.cell`, the record goes to
the store through the kernel's queue (:mod:`nbtrack.durable.queue`), and MLflow's process state is
touched only through :mod:`nbtrack.store.kernel_state`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nbtrack import KERNEL, display
from nbtrack.capture import cell as capture
from nbtrack.capture import lineage, sanitize
from nbtrack.capture.curves import LightningTap, LiveTap, lightning_series
from nbtrack.capture.figures import FigureCollector
from nbtrack.capture.notebook import notebook_path
from nbtrack.capture.pruning import PruneChannel
from nbtrack.capture.source import analyze
from nbtrack.capture.system import SystemSampler
from nbtrack.capture.values import metric_number, param_text
from nbtrack.config import EXECUTION_ID_ENV, Nbtrack, batch_runner, resolve_experiment
from nbtrack.display import short_error as _short
from nbtrack.durable.queue import SPOOL_INTERVAL_MS, KernelQueue
from nbtrack.live import LivePanel, Publish
from nbtrack.record import SYSTEM_PREFIX, CellContext, CellRecord, RunOutcome, Series, TrackOptions
from nbtrack.threads import warnings_dropped


def now_ms() -> int:
    """Milliseconds since the epoch, as MLflow stores times."""
    return int(time.time() * 1000)


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
        self.active: capture.ActiveCell | None = None
        self.last_run_id: str | None = None
        self._recorders: dict[str, Any] = {}
        self.queue = KernelQueue(self.settings, self.environ, self.recorder_for, self._written)
        # Called after each tracked cell (boards refresh themselves); weak, so a board that is
        # gone from the notebook does not keep being refreshed.
        self._after_run: list = []
        # Publishes a display under the running cell (the IPython layer sets it): the live panel.
        self.publish: Publish | None = None

    @property
    def recorder(self):
        """The recorder, imported on first use so that loading nbtrack stays fast."""
        if self._recorder is None:
            from nbtrack.store.recorder import Recorder

            self._recorder = Recorder()
        return self._recorder

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

    def experiment_for(self, option: str | None, cwd: Path, notebook: Path | None = None) -> str:
        """The experiment a cell with ``-e option`` in ``cwd`` would write to."""
        folder = notebook.parent if notebook is not None else cwd
        return resolve_experiment(option, self.settings.experiment, folder)

    def leaderboard(self, experiment: str | None = None, **options):
        """The board of ``experiment`` (default: where tracked cells here go), given what it must
        not reach for itself: this tracker, the notebook, and who is logged in when a champion moves.
        """
        from nbtrack.board.widget import Leaderboard

        notebook = notebook_path(self.environ, {}, Path.cwd())
        return Leaderboard(experiment=experiment or self.experiment_for(None, Path.cwd(), notebook),
                           tracker=self, notebook=str(notebook) if notebook else None,
                           user=lambda: lineage.current_user(self.environ), **options)

    def tracking_uri(self) -> str:
        """The store tracked cells write to now (a relative SQLite path made absolute)."""
        from nbtrack.store.kernel_state import tracking_uri

        return tracking_uri(self.environ)

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
        notebook = notebook_path(self.environ, namespace, cell.cwd)
        collector = FigureCollector()
        collector.start()
        active = capture.ActiveCell(
            cell=cell,
            options=options,
            syntax=syntax,
            experiment=self.experiment_for(options.experiment, cell.cwd, notebook),
            run_name=options.name or capture.default_run_name(notebook, cell.execution_count),
            notebook=notebook,
            started_ms=now_ms(),
            read_params=capture.read_params(syntax, namespace, self.settings.max_collection_items),
            names_before=frozenset(namespace),
            figures=collector,
            settings=self.settings,
            environ=self.environ,
        )
        active.spooled_ms = active.started_ms
        # Lightning's self.log, recorded while this cell runs only (removed in end()).
        active.lightning = LightningTap()
        active.lightning.install()
        active.pruning = PruneChannel.from_environ(self.environ)
        if self._wants_live(options):
            active.live = LivePanel(self.publish, active.run_name)
        if active.live is not None or active.pruning is not None:
            # The frameworks' own points while they train: drawn as the cell's are, and the
            # objective's reported to a search that prunes.
            active.lightning.on_points = lambda: self._framework_points(active)
            active.live_tap = LiveTap(active.lightning.on_points)
            active.live_tap.install()
        if self.settings.system_metrics:
            active.system = SystemSampler()
            active.system.start()
            if active.system.problem:
                display.warn(active.system.problem)
        try:
            active.git = lineage.git_state_soon(notebook.parent if notebook else cell.cwd)
        except RuntimeError:  # no new threads while the interpreter shuts down
            active.git = None
        self.active = active
        batch_execution = bool(self.environ.get(EXECUTION_ID_ENV))
        from nbtrack.store.kernel_state import autologging

        # An mlflow.autolog() left on logs into the cell's run, not a second run of its own.
        if ((syntax.uses_mlflow or autologging()) and not syntax.starts_own_run) or batch_execution:
            # The cell calls mlflow.log_* itself: open the run now so those calls land in it.
            # In a batch execution too: a kernel that dies mid-cell then leaves a run that
            # `nbtrack run` can end as KILLED, instead of no run at all.
            try:
                injected = capture.injected_parameters(
                    self.environ, self.settings.max_collection_items, display.warn)
                active.run_id = self.recorder.open_run(
                    active.experiment, active.run_name, active.started_ms,
                    tags=capture.opening_tags(active),
                    params=sanitize.params({k: param_text(v) for k, v in injected.items()},
                                           display.warn),
                )
            except Exception as error:
                # A run created before the failure is the one the record goes into, not a second.
                active.run_id = getattr(error, "run_id", None)
                consequence = ("the cell's own mlflow calls go to MLflow's default run"
                               if syntax.uses_mlflow else "it is recorded when the cell ends")
                display.warn(f"could not open run '{active.run_name}' before the cell "
                             f"({_short(error)}); {consequence}.")
        try:
            active.tracking_uri = self.tracking_uri()
            source = capture.redactor_for(active).redact(active.cell.raw_source)
            self.queue.note_begun(active, capture.opening_tags(active), source)
        except Exception as error:
            display.warn(f"cell not noted in the journal ({_short(error)}); should the kernel die "
                         "during it, no run will say so.")

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
        if active.lightning is not None:
            active.lightning.remove()
        if active.live_tap is not None:
            active.live_tap.remove()
        if active.system is not None:
            active.system.stop()
        if active.run_id is not None:
            from nbtrack.store.kernel_state import autologged_model_flavors

            active.autologged = autologged_model_flavors()
        ended_ms = now_ms()
        with warnings_dropped():  # what reading the cell's objects warns is not the cell's
            try:
                record = capture.build_record(active, namespace, error, ended_ms)
            except Exception as capture_error:
                active.problems.append(
                    f"could not capture the cell's values ({_short(capture_error)}); "
                    "recording its source and status only."
                )
                record = capture.minimal_record(active, error, ended_ms)
            if record.run_id is not None:
                self._leave_run(record)
        if active.live is not None:
            self._draw_last(active.live, record)
        for problem in active.problems:
            display.warn(problem)
        outcome = None
        try:
            outcome = self.queue.submit(record, active)
        except Exception as error:  # a bug of ours: the cell must not pay for it
            display.warn(f"run '{record.run_name}' not recorded: {_short(error)}")
            self.queue.unrecorded.append(record)
        if self.settings.summary:
            refusal = self.queue.refusal if outcome is None else None
            display.show_summary(record, outcome, queued_because=refusal)
        return outcome

    def _leave_run(self, record: CellRecord) -> None:
        """MLflow's active run is the one opened before the cell: leave it, so the user's next
        ``mlflow.start_run()`` is not nested in it. The writer finishes it.
        """
        try:
            from nbtrack.store.kernel_state import leave_run_of_cell

            leave_run_of_cell(record.run_id)
        except Exception as error:
            display.warn(f"run '{record.run_name}' left active in MLflow: {_short(error)}")

    # -- the store, in the background --------------------------------------------------------

    def preload(self) -> None:
        """Import MLflow in the background (see :func:`nbtrack.store.kernel_state.preload`)."""
        from nbtrack.store.kernel_state import preload

        preload()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every tracked cell's run is in the store; False if ``timeout`` ran out."""
        return self.queue.flush(timeout)

    def waiting_records(self) -> list[CellRecord]:
        """Records not in the store yet: queued for the writer, or kept in memory only."""
        return self.queue.waiting_records()

    def close(self, timeout: float | None = None) -> None:
        """Drain the queue (bounded) and release the journal; see :meth:`KernelQueue.close`."""
        self.queue.close(timeout)

    def _written(self, record: CellRecord, outcome: RunOutcome) -> None:
        """The writer put a run in the store (called on its thread, with the gate)."""
        self.last_run_id = outcome.run_id
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
        if kind is float:  # the common cases, kept short: loops call this a lot
            number = value
        elif kind is int:
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
        steps = series.steps
        # Series.add, inlined: a training loop calls this hundreds of thousands of times a second.
        steps.append(len(steps) if step is None else step if type(step) is int else int(step))
        series.values.append(number)
        series.timestamps_ms.append(timestamp_ms)
        if active.pruning is not None and key == active.pruning.objective:
            active.pruning.report(steps[-1], number)  # raises TrialPruned once pruned
        if timestamp_ms - active.spooled_ms >= SPOOL_INTERVAL_MS:
            self.queue.spool(active, timestamp_ms)
        if active.live is not None and timestamp_ms >= active.live.next_ms:
            # The sampler appends to its series on its thread; reading them here is safe (one
            # length, then items below it), and a sample missed now shows at the next redraw.
            self._draw(active, self._live_series(active))

    # -- the live panel ----------------------------------------------------------------------

    def _wants_live(self, options: TrackOptions) -> bool:
        """Whether this cell gets a live panel: ``--live``/``--no-live``, else Nbtrack.live,
        else yes unless a batch runner executes the notebook (nobody watches; the saved
        notebook stays clean).
        """
        if self.publish is None:
            return False
        if options.live is not None:
            return options.live
        if self.settings.live is not None:
            return bool(self.settings.live)
        return not batch_runner(self.environ)

    def _framework_points(self, active: capture.ActiveCell) -> None:
        """A framework reported points while it trains: pass the objective's on to a search
        that prunes (raises TrialPruned once it pruned the trial), redraw the panel when due.
        """
        pruning = active.pruning
        if pruning is not None:
            curve = active.live_tap.series.get(pruning.objective) if active.live_tap else None
            if curve is not None:
                pruning.report_curve("tap", curve.steps, curve.values)
            points = active.lightning.points(pruning.objective) if active.lightning else []
            if points:
                steps, values = zip(*points, strict=True)
                pruning.report_curve("lightning", steps, values)
        if active.live is not None and int(time.time() * 1000) >= active.live.next_ms:
            self._draw(active, self._live_series(active))

    @staticmethod
    def _live_series(active: capture.ActiveCell) -> dict[str, Series]:
        """What the panel draws: the frameworks' points, the cell's own (they win on a shared
        key), the machine's.
        """
        machine = active.system.series if active.system is not None else {}
        framework = active.live_tap.series if active.live_tap is not None else {}
        return {**framework, **lightning_series(active.lightning), **active.series, **machine}

    def _draw(self, active: capture.ActiveCell, series: Mapping[str, Series]) -> None:
        try:
            active.live.draw(series)
        except Exception as error:  # a panel that cannot draw must not cost the loop anything
            active.live = None
            display.warn(f"live panel stopped: {_short(error)}")

    def _draw_last(self, panel: LivePanel, record: CellRecord) -> None:
        """The final picture: every series of the run (framework curves and system metrics too),
        when the panel was shown or the cell recorded curves of its own.
        """
        series = {s.key: s for s in record.series}
        own = [k for k in series if not k.startswith(SYSTEM_PREFIX)]
        if not (panel.shown or own):
            return
        try:
            panel.draw(series)
        except Exception as error:  # the run matters more than its picture
            display.warn(f"live panel not drawn: {_short(error)}")

    def log_param(self, key: str, value: Any) -> None:
        """Record a param for the running tracked cell; it wins over a detected one."""
        active = self._require_active(f"log_param({key!r})")
        if active is None:
            return
        key = str(key)
        try:
            text = param_text(value)
        except Exception as error:  # e.g. a __str__ that raises
            display.warn(f"param {key!r} not logged: its value cannot be written as text "
                         f"({_short(error)}).")
            return
        if key in active.explicit_params and param_text(active.explicit_params[key]) != text:
            display.warn(f"param {key!r} was already logged as "
                         f"{param_text(active.explicit_params[key])!r} in this run; keeping that, "
                         f"not {text!r}.")
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

    def _require_active(self, call: str) -> capture.ActiveCell | None:
        if self.active is None:
            display.warn(f"nbtrack.{call} outside a %%track cell: not recorded.")
        return self.active


def current() -> Tracker | None:
    """The tracker of the running kernel, or None when the extension is not loaded."""
    return KERNEL.get("tracker")


def set_current(tracker: Tracker | None) -> None:
    """Install (or, with None, remove) the kernel's tracker."""
    if tracker is None:
        KERNEL.pop("tracker", None)
    else:
        KERNEL["tracker"] = tracker
