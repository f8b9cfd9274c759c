"""nbtrack's threads and the user's code: the gate, the import guard, warnings kept exact.

Every test here orders events with real threads and real imports; none sleeps or times."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

from nbtrack import threads
from nbtrack.threads import GATE, IMPORT_GUARD


@pytest.fixture
def guard():
    threads.install_import_guard()
    yield IMPORT_GUARD
    threads.remove_import_guard()
    GATE.user_code_ends()


@pytest.fixture
def fresh_module(tmp_path, monkeypatch):
    """The name of a module nobody has imported yet."""
    name = f"nbtrack_probe_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def wait_until(predicate, what: str, limit: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(limit * 100)):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError(f"never happened: {what}")


def test_an_nbtrack_thread_imports_only_after_user_code_ends(guard, fresh_module):
    events: list[str] = []
    GATE.user_code_starts()  # the kernel's main thread runs a cell

    def work():
        __import__(fresh_module)
        events.append("imported")

    thread = threads.start("test-import", work)
    wait_until(lambda: any(module == fresh_module for _, module in guard.refused),
               "the guard refusing the import")
    assert fresh_module not in sys.modules  # refused, not half-done
    events.append("user code ends")
    GATE.user_code_ends()
    thread.join(30)
    assert events == ["user code ends", "imported"]
    assert sys.modules[fresh_module].VALUE == 42


def test_imports_on_other_threads_and_imports_with_the_gate_are_let_through(guard, fresh_module):
    GATE.user_code_starts()
    try:
        outcome = []
        plain = threading.Thread(target=lambda: outcome.append(__import__(fresh_module).VALUE))
        plain.start()  # a user's own thread is never refused
        plain.join(30)
        assert outcome == [42]
        assert not any(module == fresh_module for _, module in guard.refused)
    finally:
        GATE.user_code_ends()


def test_a_cell_starting_while_nbtrack_holds_the_gate_waits_for_that_work(guard):
    events: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def work():
        holding.set()
        release.wait(30)
        events.append("nbtrack's work done")

    worker = threads.start("test-hold", work, gated=True)
    holding.wait(30)

    def cell():
        GATE.user_code_starts()
        events.append("cell runs")
        GATE.user_code_ends()

    main = threading.Thread(target=cell)
    main.start()
    wait_until(lambda: main.is_alive(), "the cell waiting")
    release.set()
    main.join(30)
    worker.join(30)
    assert events == ["nbtrack's work done", "cell runs"]


def test_long_work_with_the_gate_lets_a_waiting_cell_in_between_its_pieces(guard, monkeypatch):
    # A recovered journal's write of a million points, redone with the gate, kept each following
    # cell waiting up to GATE.WAIT_SECONDS. Between two pieces of work, a waiting cell goes first.
    monkeypatch.setattr(GATE, "WAIT_SECONDS", 60.0)
    events: list[str] = []
    first_piece_done, cell_waiting = threading.Event(), threading.Event()

    def work():
        for piece in range(3):
            if piece == 1:
                first_piece_done.set()
                cell_waiting.wait(30)
                wait_until(lambda: GATE._cells_waiting, "the cell waiting for the gate")
            GATE.let_user_code_in()
            assert GATE.holds()  # each piece is done with the gate
            events.append(f"piece {piece}")

    worker = threads.start("test-pieces", work, gated=True)
    first_piece_done.wait(30)

    def cell():
        cell_waiting.set()
        GATE.user_code_starts()
        events.append("cell runs")
        GATE.user_code_ends()

    main = threading.Thread(target=cell)
    main.start()
    main.join(30)
    worker.join(30)
    assert events == ["piece 0", "cell runs", "piece 1", "piece 2"]


def test_with_imports_redoes_refused_work_with_the_gate(guard, fresh_module):
    attempts: list[bool] = []
    GATE.user_code_starts()

    def work():
        attempts.append(GATE.holds())
        return __import__(fresh_module).VALUE

    results = []
    thread = threads.start("test-with-imports", lambda: results.append(threads.with_imports(work)))
    wait_until(lambda: len(attempts) == 1, "the first attempt")
    GATE.user_code_ends()
    thread.join(30)
    assert attempts == [False, True] and results == [42]


def test_an_import_refused_and_swallowed_by_library_code_is_redone_when_it_failed(guard,
                                                                                   fresh_module):
    # Library code often catches broad exceptions around lazy imports; the refusal is noted on
    # the thread, so work that failed for it is redone with the gate.
    seen: list[object] = []
    GATE.user_code_starts()

    def work():
        try:
            value = __import__(fresh_module).VALUE
        except BaseException:  # noqa: BLE001 - as careless library code does
            value = None
        seen.append(value)
        return value

    results = []
    thread = threads.start("test-swallowed", lambda: results.append(
        threads.with_imports(work, redo=lambda value: value is None)))
    wait_until(lambda: len(seen) == 1, "the first attempt")
    GATE.user_code_ends()
    thread.join(30)
    assert seen == [None, 42] and results == [42]


def test_warning_registries_survive_filter_changes_made_with_the_gate():
    # Run apart from pytest, whose own warning capture changes the filters for every test.
    script = textwrap.dedent("""
        import warnings
        from nbtrack import threads

        def helper():
            warnings.warn("careful", UserWarning)

        def other():
            warnings.warn("other", UserWarning)

        helper()                                  # shown: the first time at this place
        with threads.GATE.idle():                 # MLflow's catch_warnings, between cells
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                warnings.warn("mlflow's own", UserWarning)
        helper()                                  # not again
        with threads.warnings_dropped():          # nbtrack's own work on the main thread
            other()
        helper()                                  # not again
        other()                                   # shown: dropped above, not remembered
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    shown = [line for line in done.stderr.splitlines() if "UserWarning" in line]
    assert [line.split("UserWarning: ")[1] for line in shown] == ["careful", "other"], done.stderr


def test_work_done_despite_a_swallowed_refusal_is_not_done_twice(guard, fresh_module):
    # A write that went through although an import inside it was refused (and caught) must not
    # be written again: that made a run twice.
    done: list[int] = []
    GATE.user_code_starts()

    def work():
        try:
            __import__(fresh_module)
        except BaseException:  # noqa: BLE001 - as careless library code does
            pass
        done.append(1)
        return "written"

    results = []
    thread = threads.start("test-done-once", lambda: results.append(
        threads.with_imports(work, redo=lambda value: value != "written")))
    thread.join(30)
    GATE.user_code_ends()
    assert done == [1] and results == ["written"]
