"""The shell's hooks behind ``%%track``: a tracked cell is run by IPython itself.

An input transformer removes a valid ``%%track`` line, so IPython runs the body exactly as if the
line were not there, and the ``pre_run_cell`` / ``post_run_cell`` events begin and end the run: the
cell's output, its ``Out[n]``, its traceback and its error status are IPython's own, untouched.
The display formatter's ``format`` is wrapped so every figure shown is logged as the PNG the display
drew; stdout is watched only to start nbtrack's summary on a line of its own; and the execution
events hold :data:`~nbtrack.threads.GATE` while user code runs.
"""

from __future__ import annotations

import base64
import contextlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import IPython

from nbtrack import display
from nbtrack.record import CellContext, TrackOptions
from nbtrack.threads import GATE, install_import_guard, remove_import_guard
from nbtrack.tracker import Tracker

_TRACK_LINE = re.compile(r"^%%track(?P<args>(\s.*)?)$")

# IPython 9.8 raised shell.execution_count before pre_run_cell instead of after the cell.
_COUNT_RAISED_BEFORE_PRE_RUN = IPython.version_info >= (9, 8)


def count_of_running_cell(shell, store_history: bool = True) -> int:
    """The execution count (the ``In [n]``) of the cell that is starting or running."""
    if _COUNT_RAISED_BEFORE_PRE_RUN and store_history:
        return shell.execution_count - 1
    return shell.execution_count


@contextlib.contextmanager
def _visible_to_imports(shell):
    """``get_ipython()`` answers for nbtrack's work between cells as it does in a cell: libraries
    imported then decide how to behave by it (pandas, imported by MLflow, chooses its display width:
    in a terminal it cuts wide frames short). The shell adds the name the same way for each cell.
    """
    import builtins

    added = getattr(builtins, "get_ipython", None) is None
    if added:
        builtins.get_ipython = shell.get_ipython
    try:
        yield
    finally:
        if added and getattr(builtins, "get_ipython", None) == shell.get_ipython:
            del builtins.get_ipython


class _FigureTap:
    """Stands in for the shell's ``display_formatter.format``: every matplotlib figure the shell
    displays passes here with the PNG the display made of it, which is what nbtrack logs, so a
    figure is rendered once. What the display shows is returned unchanged.
    """

    def __init__(self, tracker: Tracker, format_method) -> None:
        self._tracker = tracker
        self._format = format_method

    def __call__(self, obj, *args, **kwargs):
        result = self._format(obj, *args, **kwargs)
        # Checked by name: importing matplotlib here would slow every display down.
        if any(cls.__name__ == "Figure" and cls.__module__ == "matplotlib.figure"
               for cls in type(obj).__mro__):
            try:
                data = result[0] if isinstance(result, tuple) and result else None
                png = data.get("image/png") if isinstance(data, dict) else None
                if isinstance(png, str):  # matplotlib-inline hands it over base64-encoded
                    png = base64.b64decode(png)
                self._tracker.figure_shown(obj, png if isinstance(png, bytes) else None)
            except Exception as error:  # a figure nbtrack cannot read must not change the display
                display.warn(f"figure not logged: {display.short_error(error)}")
        return result


class _LineEndWatch:
    """Stands in for sys.stdout during a tracked cell and forwards everything to it, noting only
    whether the last text written ended a line, so nbtrack's summary starts on a line of its own
    after ``print(..., end='')``.
    """

    def __init__(self, stream) -> None:
        self._stream = stream
        self.at_line_start = True

    def write(self, text):
        if text:
            self.at_line_start = str(text).endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _UserCodeWatch:
    """Holds :data:`~nbtrack.threads.GATE` while the shell runs user code, so nbtrack's threads
    import, draw and let MLflow touch warning filters only between executions.

    An execution holds it from ``pre_execute`` to its ``post_run_cell``, which comes after every
    ``post_execute`` callback (the inline backend draws its figures there) and after the tracked
    cell's run has ended; a silent execution gets no ``post_run_cell`` and lets go at
    ``post_execute``. A cell run from inside another (``%%capture``, ``run_cell_magic``) is
    nested, and the gate is let go when the outermost ends.
    """

    def __init__(self) -> None:
        # One entry per execution under way, innermost last: its ExecutionInfo once
        # pre_run_cell names it, None for a silent one.
        self._running: list = []

    def pre_execute(self) -> None:
        if not self._running:
            GATE.user_code_starts()
        self._running.append(None)

    def pre_run_cell(self, info) -> None:
        if self._running and self._running[-1] is None:
            self._running[-1] = info

    def post_execute(self) -> None:
        if self._running and self._running[-1] is None:
            self._ended()

    def post_run_cell(self, result) -> None:
        # An empty cell gets post_run_cell without pre_execute: it is not on the list.
        if self._running and self._running[-1] is getattr(result, "info", None):
            self._ended()

    def release(self) -> None:
        """Let go whatever is held (unloading, possibly from inside a cell)."""
        self._running.clear()
        GATE.user_code_ends()

    def _ended(self) -> None:
        self._running.pop()
        if not self._running:
            GATE.user_code_ends()


class ShellHooks:
    """The hooks one shell runs for nbtrack; ``parse_options`` reads a ``%%track`` line's
    arguments (raising IPython's UsageError when they are wrong).
    """

    def __init__(self, shell, tracker: Tracker, parse_options: Callable[[str], TrackOptions]) -> None:
        self.shell = shell
        self.tracker = tracker
        self.parse_options = parse_options
        self.tracked_info = None
        self._tracked_count = None  # execution count of the tracked cell running now
        self._line_watch: _LineEndWatch | None = None
        self._figure_tap = _FigureTap(tracker, shell.display_formatter.format)
        self._user_code = _UserCodeWatch()

    def strip_track_line(self, lines: list[str]) -> list[str]:
        """Input transformer: drop a valid ``%%track`` line so IPython runs the body itself.

        An invalid line is left in place: IPython then calls the magic, whose UsageError says
        what is wrong, and the cell does not run.
        """
        if not lines:
            return lines
        match = _TRACK_LINE.match(lines[0].rstrip("\r\n"))
        if match is None or match.group("args").rstrip().endswith("?"):
            return lines
        try:
            self.parse_options(match.group("args"))
        except Exception:  # a UsageError: IPython calls the magic, which says what is wrong
            return lines
        return lines[1:]

    def pre_run_cell(self, info) -> None:
        """Begin a run when the cell about to run starts with ``%%track``."""
        if self.tracked_info is not None and self.shell.execution_count == self._tracked_count:
            # A cell run from inside the tracked cell (%%capture does so): part of it.
            return
        self.tracked_info = None
        raw = info.raw_cell.lstrip("\r\n")
        first, _, body = raw.partition("\n")
        match = _TRACK_LINE.match(first.rstrip("\r"))
        if match is None or match.group("args").rstrip().endswith("?"):
            return
        try:
            options = self.parse_options(match.group("args"))
        except Exception:  # a UsageError: the magic reports it when IPython calls it
            return
        try:
            count = count_of_running_cell(self.shell, info.store_history)
            self.begin(body, options, count, cell_id=getattr(info, "cell_id", None), raw=info.raw_cell)
            self.tracked_info = info
            self._tracked_count = self.shell.execution_count
            self._line_watch = _LineEndWatch(sys.stdout)
            sys.stdout = self._line_watch
            failure = self.tracker.active.syntax.error if self.tracker.active else None
            if failure is not None:
                # IPython will not run this cell, and sends no post_run_cell for it.
                self.tracked_info = None
                self._end_line_watch()
                self.tracker.end(self.shell.user_ns, failure)
        except Exception as error:
            display.warn(f"this cell runs untracked: {display.short_error(error)}")

    def post_run_cell(self, result) -> None:
        """End the run of the tracked cell that just ran."""
        if self.tracked_info is None or result.info is not self.tracked_info:
            return
        self.tracked_info = None
        self._end_line_watch()
        try:
            self.tracker.end(self.shell.user_ns, result.error_in_exec or result.error_before_exec)
        except Exception as error:  # Tracker.end reports its own problems; this is a last guard
            display.warn(f"run not recorded: {display.short_error(error)}")

    def _end_line_watch(self) -> None:
        watch, self._line_watch = self._line_watch, None
        if watch is None:
            return
        if sys.stdout is watch:  # unless the cell put a stream of its own there
            sys.stdout = watch._stream
        if not watch.at_line_start:
            sys.stdout.write("\n")

    def begin(self, body: str, options: TrackOptions, count: int, cell_id,
              raw: str | None = None) -> None:
        """Begin tracking the cell ``body`` (In[``count``]) with the kernel's history so far."""
        shell = self.shell
        try:
            code = shell.transform_cell(body)
        except Exception:  # IPython syntax it cannot transform: analyze nothing, still track
            code = ""
        history = tuple(
            (index, source)
            for index, source in enumerate(shell.history_manager.input_hist_raw)
            if index and source and index < count
        )
        cell = CellContext(
            raw_source=raw if raw is not None else body,
            code=code,
            execution_count=count,
            cell_id=cell_id,
            history=history,
            cwd=Path.cwd(),
        )
        self.tracker.begin(cell, options, shell.user_ns)

    # -- installing and removing -------------------------------------------------------------

    def install(self) -> None:
        """Register the hooks this class needs on its shell."""
        shell = self.shell
        install_import_guard()
        GATE.surroundings = lambda: _visible_to_imports(shell)
        shell.input_transformers_cleanup.append(self.strip_track_line)
        for event, callback in self._callbacks():
            shell.events.register(event, callback)
        shell.events.register("post_execute", self._preload)
        shell.display_formatter.format = self._figure_tap

    def uninstall(self) -> None:
        """Remove every hook :meth:`install` registered."""
        shell = self.shell
        if self.strip_track_line in shell.input_transformers_cleanup:
            shell.input_transformers_cleanup.remove(self.strip_track_line)
        for event, callback in [*self._callbacks(), ("post_execute", self._preload)]:
            try:
                shell.events.unregister(event, callback)
            except ValueError:
                pass  # already gone (the preload unregisters itself): harmless
        self._user_code.release()
        remove_import_guard()
        GATE.surroundings = contextlib.nullcontext
        if shell.display_formatter.__dict__.get("format") is self._figure_tap:
            del shell.display_formatter.__dict__["format"]
        self.tracker.close()

    def _preload(self) -> None:
        """After the execution that loaded nbtrack (the first one to end), import MLflow in the
        background: started between executions, it holds the gate, so the next cell waits for it
        rather than import beside it; started while loading, it could race the rest of that cell.
        """
        try:
            self.shell.events.unregister("post_execute", self._preload)
        except ValueError:
            pass
        self.tracker.preload()

    def _callbacks(self) -> list[tuple[str, object]]:
        watch = self._user_code
        # In this order: the tracked cell's run ends (post_run_cell) before the gate is let go.
        return [("pre_execute", watch.pre_execute), ("pre_run_cell", watch.pre_run_cell),
                ("pre_run_cell", self.pre_run_cell), ("post_run_cell", self.post_run_cell),
                ("post_execute", watch.post_execute), ("post_run_cell", watch.post_run_cell)]

