"""Journaled records reach a real SQLite store (nbtrack/durable/writer.py): in order, resumed, and
retried while the store refuses them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

from nbtrack.durable import writer as writers
from nbtrack.durable.journal import KernelJournal, kernel_folders
from nbtrack.durable.writer import BackgroundWriter, recover, write_entry
from nbtrack.record import FINISHED, CellRecord, Series
from nbtrack.store.recorder import Recorder


def a_record(name: str, start: int, experiment: str = "exp") -> CellRecord:
    return CellRecord(experiment=experiment, run_name=name, start_time_ms=start,
                      end_time_ms=start + 1, status=FINISHED, params={"name": name},
                      metrics={"score": start / 1000})


def recorders():
    made: dict[str, Recorder] = {}
    return lambda uri: made.setdefault(uri, Recorder(uri))


def run_names(client, experiment: str = "exp") -> list[str]:
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    return [r.info.run_name for r in runs]


def wait_until(condition, seconds: float = 60) -> None:
    """Wait for something the writer's thread does (not a fixed time: until it is done)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the writer did not get there"
        time.sleep(0.01)


def test_write_entry_writes_and_forgets_the_record(store, client, tmp_path):
    journal = KernelJournal.create(tmp_path / "journal")
    entry = journal.keep(a_record("one", 1_000), store)
    outcome = write_entry(Recorder(store), journal, entry)
    assert outcome.problems == () and run_names(client) == ["one"]
    assert journal.records() == [] and journal.is_empty()


def test_write_entry_resumes_from_the_progress_the_journal_holds(store, client, tmp_path):
    journal = KernelJournal.create(tmp_path / "journal")
    entry = journal.keep(a_record("one", 1_000), store)
    recorder = Recorder(store)
    # A first attempt that got as far as making the run, then the kernel died.
    run_id = recorder.client.create_run(recorder.experiment_id("exp"), run_name="one").info.run_id
    journal.save_progress(entry, {"run_id": run_id, "done": []})
    outcome = write_entry(recorder, journal, entry)
    assert outcome.run_id == run_id and run_names(client) == ["one"]
    assert client.get_run(run_id).info.status == FINISHED


def test_background_writer_writes_records_in_the_order_cells_ran(store, client, tmp_path):
    journal = KernelJournal.create(tmp_path / "journal")
    written = []
    background = BackgroundWriter(journal, recorders(),
                                  on_written=lambda record, outcome: written.append(record.run_name))
    for index, name in enumerate(["a", "b", "c", "d"]):
        background.submit(journal.keep(a_record(name, 1_000 + index), store))
    assert background.flush(timeout=120)
    assert written == ["a", "b", "c", "d"] and run_names(client) == ["a", "b", "c", "d"]
    assert background.pending() == 0 and journal.records() == []
    assert len(background.outcomes) == 4 and background.refusal is None
    assert background.close(timeout=5) == 0
    assert not journal.folder.exists()  # nothing waits: the folder goes


def test_background_writer_retries_a_refused_store_and_keeps_the_order(
        tmp_path, client, store, empty_store_file, monkeypatch, capsys):
    # A real refusal: the store's folder is a file at first, so SQLite cannot open it.
    monkeypatch.setattr(writers, "RETRY_PAUSES", (0.05,))
    blocked = tmp_path / "later"
    blocked.write_text("not a folder")
    database = blocked / "mlflow.db"
    uri = f"sqlite:///{database}"
    journal = KernelJournal.create(tmp_path / "journal")
    background = BackgroundWriter(journal, recorders())
    for index, name in enumerate(["a", "b", "c"]):
        background.submit(journal.keep(a_record(name, 1_000 + index, experiment="later"), uri))
    wait_until(lambda: background.refusal is not None)
    assert background.pending() == 3 and len(journal.records()) == 3  # nothing is lost
    assert not background.flush(timeout=0.2)
    warned = capsys.readouterr().err
    assert "not recorded yet" in warned and str(journal.folder) in warned

    blocked.unlink()  # the store comes back
    blocked.mkdir()
    shutil.copy(empty_store_file, database)
    assert background.flush(timeout=120)
    from mlflow import MlflowClient

    assert run_names(MlflowClient(uri), "later") == ["a", "b", "c"]
    assert background.refusal is None and journal.records() == []
    assert "the store answers again" in capsys.readouterr().out
    assert capsys.readouterr().err.count("not recorded yet") == 0  # warned once, not per attempt
    background.close(timeout=5)


def test_close_leaves_what_the_store_refused_in_the_journal(tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "RETRY_PAUSES", (0.05,))
    (tmp_path / "blocked").write_text("")
    journal = KernelJournal.create(tmp_path / "journal")
    background = BackgroundWriter(journal, recorders())
    background.submit(journal.keep(a_record("a", 1_000), f"sqlite:///{tmp_path}/blocked/m.db"))
    assert background.close(timeout=0.5) == 1
    assert [f.name for f in (tmp_path / "journal").iterdir()] == [journal.folder.name]
    assert len(KernelJournal.claim(journal.folder).records()) == 1


def test_recover_writes_an_ended_kernels_records_and_ends_its_running_cell_killed(
        store, client, tmp_path):
    root = tmp_path / "journal"
    script = textwrap.dedent(f"""
        import os, signal
        from nbtrack.durable.journal import KernelJournal, SeriesSpool
        from nbtrack.durable.writer import begun_facts
        from nbtrack.record import CellRecord, Series
        journal = KernelJournal.create({str(root)!r})
        journal.keep(CellRecord("exp", "done", 1000, 1001, "FINISHED"), {store!r})
        facts = begun_facts({store!r}, "exp", "running", 2000, {{}}, "train()", None)
        begun = journal.begun(2000, facts)
        loss = Series("loss")
        loss.add(0.5, 0, 2000)
        SeriesSpool(begun).write({{"loss": loss}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    died = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ}, timeout=120)
    assert died.returncode == -9, died.stderr
    result = recover(recorders(), root=root)
    assert [r.run_name for r, _ in result.written] == ["done"]
    assert [name for name, _, _ in result.killed] == ["running"]
    assert result.waiting == 0 and result.problems == []
    killed = client.get_run(result.killed[0][1])
    assert killed.info.status == "KILLED"
    assert "the kernel died" in killed.data.tags["nbtrack.killed_reason"]
    assert [m.value for m in client.get_metric_history(killed.info.run_id, "loss")] == [0.5]
    assert kernel_folders(root) == []  # the ended kernel's folder is gone
    assert recover(recorders(), root=root).written == []  # nothing twice


def test_recover_leaves_a_live_kernels_journal_alone(store, client, tmp_path):
    live = KernelJournal.create(tmp_path / "journal")
    live.keep(a_record("mine", 1_000), store)
    assert recover(recorders(), root=tmp_path / "journal").written == []
    assert len(live.records()) == 1
    live.close()


def test_series_points_reach_the_store_with_their_steps(store, client, tmp_path):
    points = Series("loss")
    for step in range(5):
        points.add(1.0 / (step + 1), step * 10, 1_000 + step)
    record = CellRecord("exp", "curve", 1_000, 2_000, FINISHED, series=(points,))
    journal = KernelJournal.create(tmp_path / "journal")
    outcome = write_entry(Recorder(store), journal, journal.keep(record, store))
    history = client.get_metric_history(outcome.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (10, 0.5), (20, 1 / 3), (30, 0.25),
                                                    (40, 0.2)]


def test_cells_keep_starting_while_recovery_writes_a_long_series(store, client, tmp_path):
    # An ended kernel left a record of 50,000 points. Its recovery meets MLflow's first imports
    # while cells run, and is redone with the gate; that write must let waiting cells in between
    # its batches: each cell waited up to GATE.WAIT_SECONDS for all of it.
    # A process of its own, so MLflow is not imported yet, as in a kernel that just started.
    root = tmp_path / "journal"
    script = textwrap.dedent(f"""
        import sys, threading, time
        from nbtrack import threads
        from nbtrack.threads import GATE
        from nbtrack.durable.journal import KernelJournal
        from nbtrack.durable.writer import recover
        from nbtrack.record import CellRecord, Series

        loss = Series("loss")
        for step in range(50_000):
            loss.add(1.0 / (step + 1), step, 1_000 + step)
        ended = KernelJournal.create({str(root)!r})
        ended.keep(CellRecord("exp", "long", 1_000, 2_000, "FINISHED", series=(loss,)), {store!r})
        ended.close()  # as its kernel ended: the record stays, the folder can be claimed

        def recorder_for(uri):
            from nbtrack.store.recorder import Recorder  # imports MLflow: on the recovery thread
            return Recorder(uri)

        threads.install_import_guard()
        GATE.WAIT_SECONDS = 600.0  # a cell waiting for the write would wait for all of it
        recovered = threading.Event()
        GATE.user_code_starts()  # a cell runs as the recovery starts
        recovery = threads.start("recovery", lambda: (recover(recorder_for, root={str(root)!r}),
                                                      recovered.set()))
        cells_during_the_write = 0
        while not recovered.is_set() and cells_during_the_write < 10:
            GATE.user_code_ends()
            time.sleep(0.05)  # between two cells: the recovery may import now
            GATE.user_code_starts()  # the next cell
            if "mlflow" in sys.modules and not recovered.is_set():
                cells_during_the_write += 1
        GATE.user_code_ends()
        recovery.join(600)
        print("cells during the write:", cells_during_the_write)
        print("refused imports:", len(threads.IMPORT_GUARD.refused))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ}, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "cells during the write: 10" in done.stdout, done.stdout
    assert int(done.stdout.split("refused imports: ")[1]) > 0  # the imports did meet cells
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(step, 1.0 / (step + 1))
                                                    for step in range(50_000)]


def test_a_write_cut_short_right_after_the_store_made_its_run_makes_no_second_run(
        store, client, tmp_path, monkeypatch):
    # The import-race test found a run in the store twice, one left RUNNING: an attempt stopped
    # after create_run's insert and before the journal noted the run's id, then was done again.
    from nbtrack.threads import ImportNotNow

    journal = KernelJournal.create(tmp_path / "journal")
    entry = journal.keep(a_record("one", 1_000), store)
    recorder = Recorder(store)
    real_create_run = recorder.client.create_run
    cut: list[str] = []

    def create_run_then_cut(*args, **kwargs):
        run = real_create_run(*args, **kwargs)
        if not cut:  # the injected fault: an import refused inside create_run, after its insert
            cut.append(run.info.run_id)
            raise ImportNotNow("injected: an import refused after the run was made")
        return run

    monkeypatch.setattr(recorder.client, "create_run", create_run_then_cut)
    try:
        write_entry(recorder, journal, entry)
    except ImportNotNow:
        pass
    assert cut, "the fault was not injected"
    outcome = write_entry(recorder, journal, entry)
    assert outcome.run_id == cut[0] and outcome.problems == ()
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("one", "FINISHED")]
