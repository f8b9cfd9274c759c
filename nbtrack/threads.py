"""The rules nbtrack's own threads keep toward the user's code.

nbtrack writes runs on threads of its own (the writer, the store's opening, the recovery of ended
kernels' journals, the run index), so a cell never waits for the store. Three things those threads
must never do while user code runs, because Python makes them process-wide:

- **Import.** Python's import system does not make concurrent first imports of one package family
  safe: a thread that imports MLflow (and with it numpy, pandas, SQLAlchemy) while a cell imports
  numpy can hand the cell a half-initialized module ("cannot import name ... from partially
  initialized module"). So every first import on an nbtrack thread happens while that thread holds
  the :data:`GATE`, which the kernel's main thread holds while it runs user code. An import
  guard (a ``sys.meta_path`` finder, installed with the extension) refuses any other first import
  on an nbtrack thread with :class:`ImportNotNow`; the thread then does that piece of work again
  with the gate in hand (:func:`with_imports`).
- **Draw.** matplotlib is not thread-safe (its mathtext parser is one object every figure shares):
  figure copies are drawn with the gate in hand.
- **Touch warnings.** Warning filters are one list for the whole process: ``catch_warnings()``
  on any thread swaps them for every thread, and entering it, or changing a filter, makes every
  module forget which warnings it has shown once already (``__warningregistry__``), so a warning
  Python shows once per place would show again. nbtrack never changes the filters itself;
  MLflow and the model flavors do, inside model logging: that work runs with the gate in hand, and
  while the gate is held by an nbtrack thread (or nbtrack's hooks quiet MLflow on the main thread),
  filter changes do not reset the registries (:func:`registries_kept`), so each warning is still
  shown exactly once, as it would be without nbtrack.

The kernel's main thread takes the gate as an execution begins and lets it go once the execution,
its display and nbtrack's hooks are done (``nbtrack.ipython``); a cell that starts while an
nbtrack thread holds it waits for that piece of work, at most :attr:`IdleGate.WAIT_SECONDS`.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TypeVar

# Every thread nbtrack starts is named so; MLflow's log records and warnings from them are dropped.
THREAD_PREFIX = "nbtrack-"

T = TypeVar("T")


class ImportNotNow(BaseException):  # noqa: N818 - not an error: a signal to retry with the gate
    """An nbtrack thread tried a first import without the gate; it does the work again with it.

    A BaseException, so that library code catching ``Exception`` or ``ImportError`` (an optional
    dependency's fallback) does not take it for a missing module and carry on without it.
    """


class IdleGate:
    """Held by the kernel's main thread while user code runs, and by an nbtrack thread while it
    imports, draws or lets MLflow change warning filters. Never both at once.
    """

    # A cell about to start waits at most this long for an nbtrack thread's piece of work (an
    # import of MLflow on a busy machine takes seconds); after that it runs anyway, and no other
    # piece of nbtrack's work starts until it ends.
    WAIT_SECONDS = 30.0

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._user: int | None = None  # the thread running user code
        self._worker: int | None = None  # the nbtrack thread holding the gate
        self._cells_waiting = 0  # executions waiting to start: they go before nbtrack's work
        self._held: ExitStack | None = None  # what the worker entered with the gate
        # Entered around each piece of work done with the gate: the IPython layer makes its
        # shell visible there, as it is to a cell (pandas, imported by MLflow, asks get_ipython()
        # whether it runs in a kernel to choose its display width).
        self.surroundings: Callable[[], AbstractContextManager] = nullcontext

    # -- the kernel's main thread -------------------------------------------------------------

    def user_code_starts(self) -> None:
        """Called on the main thread as an execution begins."""
        with self._changed:
            if self._user is None:
                self._cells_waiting += 1
                try:
                    self._changed.wait_for(lambda: self._worker is None, timeout=self.WAIT_SECONDS)
                finally:
                    self._cells_waiting -= 1
                self._user = threading.get_ident()

    def user_code_ends(self) -> None:
        """Called on the main thread once an execution (and its display) has ended."""
        with self._changed:
            if self._user == threading.get_ident():
                self._user = None
                self._changed.notify_all()

    @contextmanager
    def lent(self):
        """While the thread running user code waits for nbtrack's threads, they may work."""
        lending = self._user == threading.get_ident()
        if lending:
            self.user_code_ends()
        try:
            yield
        finally:
            if lending:
                self.user_code_starts()

    @property
    def user_code_running(self) -> bool:
        """Whether a thread runs user code now."""
        return self._user is not None

    # -- nbtrack's threads --------------------------------------------------------------------

    @contextmanager
    def idle(self):
        """Hold the gate: wait until no user code runs, and keep it from starting meanwhile.

        Re-entrant; on the thread that runs user code (``nbtrack sync`` called from a cell) it
        is already held. While held, warning filter changes keep the registries (see module doc).
        """
        if self.holds():
            yield
            return
        self._take()
        try:
            yield
        finally:
            self._give()

    def let_user_code_in(self) -> None:
        """Called by long work of nbtrack's between its pieces (a write of many metric batches):
        if this thread holds the gate and an execution waits to start, let it start, and take the
        gate back once no user code runs. A cell then waits for one piece, not for all the work.
        """
        if self._worker != threading.get_ident() or not self._cells_waiting:
            return
        self._give()
        self._take()

    def _take(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._user is None and self._worker is None
                                   and not self._cells_waiting)
            self._worker = threading.get_ident()
        held = ExitStack()
        try:
            held.enter_context(registries_kept())
            held.enter_context(self.surroundings())
        except BaseException:
            held.close()
            self._release()
            raise
        self._held = held

    def _give(self) -> None:
        held, self._held = self._held, None
        try:
            if held is not None:
                held.close()
        finally:
            self._release()

    def _release(self) -> None:
        with self._changed:
            self._worker = None
            self._changed.notify_all()

    def holds(self) -> bool:
        """Whether the calling thread holds the gate."""
        me = threading.get_ident()
        return self._user == me or self._worker == me


GATE = IdleGate()


# -- the import guard ---------------------------------------------------------------------------

class _ImportGuard:
    """A ``sys.meta_path`` finder that finds nothing: it refuses first imports on guarded nbtrack
    threads that do not hold the gate, and lets every other import through to the real finders.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        # (thread name, module) of each refused import, for tests and for `nbtrack` debugging.
        self.refused: list[tuple[str, str]] = []

    def find_spec(self, name, path=None, target=None):
        if not getattr(self._local, "guarded", False) or GATE.holds():
            return None
        self._local.refused = True
        self.refused.append((threading.current_thread().name, name))
        raise ImportNotNow(f"{name} imported on {threading.current_thread().name} without the gate")

    def guard_this_thread(self) -> None:
        self._local.guarded = True

    def refused_here(self) -> bool:
        """Whether an import was refused on this thread since :meth:`take_refusal` last looked."""
        return getattr(self._local, "refused", False)

    def take_refusal(self) -> bool:
        """Whether an import was refused on this thread since the last call (and forget it)."""
        refused = getattr(self._local, "refused", False)
        self._local.refused = False
        return refused


IMPORT_GUARD = _ImportGuard()


def install_import_guard() -> None:
    """Put the guard first in ``sys.meta_path`` (idempotent)."""
    if IMPORT_GUARD not in sys.meta_path:
        sys.meta_path.insert(0, IMPORT_GUARD)


def remove_import_guard() -> None:
    """Take the guard out of ``sys.meta_path``."""
    while IMPORT_GUARD in sys.meta_path:
        sys.meta_path.remove(IMPORT_GUARD)


def with_imports(work: Callable[[], T], redo: Callable[[T], bool] | None = None) -> T:
    """Run ``work``; if it needed a first import (refused without the gate), run it again with
    the gate in hand. ``work`` must be safe to repeat (the recorder resumes from its progress).

    A refusal that library code caught and turned into an ordinary failure leaves ``work``'s
    result to say so: ``redo(result)`` tells whether that result is one to try again (a write the
    store "refused"). A result that is not is kept: work done must not be done twice.
    """
    IMPORT_GUARD.take_refusal()
    try:
        result = work()
    except ImportNotNow:
        IMPORT_GUARD.take_refusal()
    else:
        if not IMPORT_GUARD.take_refusal() or redo is None or not redo(result):
            return result
    with GATE.idle():
        return work()


def start(name: str, target: Callable[[], object], *, gated: bool = False) -> threading.Thread:
    """Start a daemon thread of nbtrack's named ``nbtrack-<name>``, under the import guard.

    ``gated``: the whole of ``target`` runs with the gate in hand (for short work that imports
    from the start, such as MLflow itself); otherwise ``target`` takes the gate where it needs
    it, through :func:`with_imports` or :meth:`IdleGate.idle`. Should a first import still
    escape it, ``target`` is run again with the gate (so it must be safe to repeat).
    """

    def run() -> None:
        IMPORT_GUARD.guard_this_thread()
        try:
            if gated:
                with GATE.idle():
                    target()
            else:
                target()
        except ImportNotNow:  # a first import outside with_imports: do it all with the gate
            with GATE.idle():
                target()

    thread = threading.Thread(target=run, name=THREAD_PREFIX + name, daemon=True)
    thread.start()
    return thread


# -- warnings -----------------------------------------------------------------------------------

_KEEPING = threading.Lock()
_keepers = 0
# What the warnings module calls after a filter change to reset the registries (3.10 to 3.12;
# 3.13 renamed it).
_MUTATION_HOOKS = ("_filters_mutated", "_filters_mutated_lock_held")
_replaced: dict = {}


def _keep_registries() -> None:
    """Stands in for ``warnings._filters_mutated`` while registries are kept."""


@contextmanager
def registries_kept():
    """While inside, changes to the warning filters (``catch_warnings``, ``simplefilter``) do not
    make modules forget which warnings they have shown: used only while no user code runs, by
    nbtrack's work and MLflow's within it, whose filter changes are all undone when they end.
    """
    global _keepers
    with _KEEPING:
        if _keepers == 0:
            for name in _MUTATION_HOOKS:
                if hasattr(warnings, name):
                    _replaced[name] = getattr(warnings, name)
                    setattr(warnings, name, _keep_registries)
        _keepers += 1
    try:
        yield
    finally:
        with _KEEPING:
            _keepers -= 1
            if _keepers == 0:
                for name, original in _replaced.items():
                    setattr(warnings, name, original)
                _replaced.clear()


@contextmanager
def warnings_dropped():
    """Warnings raised inside are neither shown nor remembered as shown, and the registries of
    warnings shown before are kept: for nbtrack's own work on the main thread between user code
    (capture, and MLflow calls in the execution hooks).
    """
    with registries_kept(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
