"""Never lose a run, never make the cell wait (issue 6): the journal, the background writer,
recovery of ended kernels, and the store failing in the ways stores fail.

Faults are real: a file where the store's folder should be, another process holding SQLite's
write lock, a file where the artifact folder should be, a kernel killed with SIGKILL, a tracking
server killed mid-session and mid-sweep. One is injected: a full disk (see its test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import cell_runs, nbtrack_cli, own_metrics, write_notebook


def sync():
    return nbtrack_cli("sync", timeout=300)


def runs_by_name(uri: str, experiment: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    return {r.data.tags["mlflow.runName"]: r for r in client.search_runs([found.experiment_id])}


def journal_files(root: Path, pattern: str) -> list[Path]:
    return sorted(root.glob(f"*/{pattern}"))


def test_cells_return_before_the_store_has_the_run_and_reads_wait_for_it(shell):
    import nbtrack

    shell.ok("import nbtrack")
    shell.ok("%%track -e fast -n one\nlr = 0.1\nloss = lr * 3")
    shell.ok("%%track -e fast -n two\nlr = 0.2\nloss = lr * 3")
    table = nbtrack.runs("fast")  # reading through nbtrack waits for the writer
    assert sorted(table["tags.mlflow.runName"]) == ["one", "two"]
    assert nbtrack.flush(timeout=60)
    assert nbtrack.unrecorded() == []
    two = shell.client.get_run(nbtrack.last_run())
    assert two.data.tags["mlflow.runName"] == "two" and two.info.status == "FINISHED"
    assert two.data.params == {"lr": "0.2"}


def test_store_away_at_first_then_back_gets_every_run_in_order_with_original_times(
        shell, tmp_path, monkeypatch, capsys):
    import nbtrack

    # A file where the store's folder should be: neither SQLite nor MLflow can open the store.
    (tmp_path / "not-yet").write_text("in the way")
    missing = tmp_path / "not-yet" / "mlflow.db"
    uri = f"sqlite:///{missing}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = shell.run("%%track -e kept -n offline\nrate = 0.5\nscore = rate * 2\nscore")
    assert result.success and result.result == 1.0
    queued = nbtrack.unrecorded()
    assert [r.run_name for r in queued] == ["offline"]
    started = queued[0].start_time_ms
    err = capsys.readouterr().err
    assert "run 'offline' not recorded yet" in err and "queued in" in err
    shell.ok("%%track -e kept -n second\nb = 2")
    assert "queued: the store is not answering" in capsys.readouterr().out
    assert len(journal_files(tmp_path / "journal", "*.record")) == 2

    missing.parent.unlink()  # the store is back: the writer's next attempt gets through
    assert nbtrack.flush(timeout=120)
    assert "the store answers again" in capsys.readouterr().out
    runs = runs_by_name(uri, "kept")
    assert set(runs) == {"offline", "second"}
    assert runs["offline"].info.start_time == started
    assert runs["offline"].info.start_time < runs["second"].info.start_time
    assert runs["offline"].data.params["rate"] == "0.5"
    assert runs["offline"].data.metrics["score"] == 1.0
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert journal_files(tmp_path / "journal", "*.record") == []


def test_sync_writes_what_a_kernel_that_shut_down_left(shell, tmp_path, monkeypatch):
    (tmp_path / "later").write_text("in the way")
    missing = tmp_path / "later" / "mlflow.db"
    uri = f"sqlite:///{missing}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    shell.ok("%config Nbtrack.drain_seconds = 1")
    shell.ok("%%track -e kept -n first\na = 1")
    shell.ok("%%track -e kept -n second\nb = 2")
    # While the kernel lives, its own writer owns the runs: sync only lists them.
    alive = sync()
    assert alive.returncode == 1 and "a running kernel writes them itself" in alive.stdout
    shell.ip.run_line_magic("unload_ext", "nbtrack")  # the kernel shuts down, store still away

    still = sync()
    assert still.returncode == 1
    assert "pending 2 run(s): the store still refuses them" in still.stdout
    missing.parent.unlink()
    done = sync()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("pushed  run 'first'") and lines[1].startswith("pushed  run 'second'")
    assert lines[-1] == "all kept runs are recorded"
    assert sync().stdout.strip().startswith("nothing to sync")
    assert set(runs_by_name(uri, "kept")) == {"first", "second"}
    shell.ip.run_line_magic("load_ext", "nbtrack")  # for the fixture's teardown


def hold_write_lock(database: Path, seconds: float, ready: threading.Event) -> None:
    """Fault: another process takes SQLite's write lock on the store and keeps it."""
    code = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "db.execute('ROLLBACK')\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(database), str(seconds)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    ready.set()
    process.wait(timeout=seconds + 60)


# A lock kept until the test lets go bounds itself, so a test whose cell waits for the store
# (the behaviour under test gone) fails instead of hanging; this is no assertion about time.
LOCK_LIMIT_SECONDS = 60


@contextlib.contextmanager
def write_locked(database: Path, mode: str = "EXCLUSIVE"):
    """Fault: another process takes SQLite's write lock on the store and keeps it until the block
    ends (or LOCK_LIMIT_SECONDS pass). ``EXCLUSIVE`` keeps readers out too; ``IMMEDIATE`` only
    writers. Yields the holder process, running while the lock is held."""
    code = (
        "import select, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n"
        f"db.execute('BEGIN {mode}')\n"
        "print('locked', flush=True)\n"
        "select.select([sys.stdin], [], [], float(sys.argv[2]))\n"
        "db.execute('ROLLBACK')\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(database), str(LOCK_LIMIT_SECONDS)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process
    finally:
        process.stdin.close()  # let go
        process.wait(timeout=LOCK_LIMIT_SECONDS + 60)


def test_the_next_cell_runs_while_the_store_is_still_locked(shell, store):
    """The cell never waits for the store, shown by the order of events: the statement after a
    tracked cell runs while another process still holds the store's write lock (it cannot even
    be read), and the run reaches the store only once the lock is let go."""
    import nbtrack

    shell.ok("%%track -e order -n before\nx = 1")  # the store exists, with its tables
    assert nbtrack.flush(timeout=60)
    database = Path(store[len("sqlite:///"):])
    events = []
    shell.ip.user_ns.update(events=events, database=str(database))
    with write_locked(database) as holder:
        shell.ok("%%track -e order -n during\nscore = 0.5 + 1")
        shell.ok("import sqlite3, nbtrack\n"
                 "try:\n"
                 "    sqlite3.connect(database, timeout=0).execute('SELECT 1 FROM runs').fetchall()\n"
                 "    events.append('next cell: the store answers')\n"
                 "except sqlite3.OperationalError as error:\n"
                 "    events.append(f'next cell: the store says {error}')\n"
                 "events.append(f'next cell: unrecorded {[r.run_name for r in nbtrack.unrecorded()]}')")
        assert events == ["next cell: the store says database is locked",
                          "next cell: unrecorded ['during']"]
        assert holder.poll() is None, "the lock was let go before the test let it go"
    assert nbtrack.flush(timeout=180)  # the lock is let go: now the run reaches the store
    during = runs_by_name(store, "order")["during"]
    assert during.info.status == "FINISHED" and during.data.metrics["score"] == 1.5


def test_sqlite_locked_by_another_process_for_ten_seconds(shell, store, capsys):
    import nbtrack

    shell.ok("import nbtrack")
    shell.ok("%%track -e locked -n before\nx = 1")  # the store exists, with its tables
    assert nbtrack.flush(timeout=60)
    database = Path(store[len("sqlite:///"):])
    ready = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(database, 10, ready))
    holder.start()
    assert ready.wait(30)
    for index in range(3):
        result = shell.run(f"%%track -e locked -n during-{index}\nscore = {index} + 0.5\nscore")
        assert result.success and result.result == index + 0.5
    holder.join()
    assert nbtrack.flush(timeout=180)
    runs = runs_by_name(store, "locked")
    assert set(runs) == {"before", "during-0", "during-1", "during-2"}
    for index in range(3):
        run = runs[f"during-{index}"]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["score"] == index + 0.5
    assert sqlite3.connect(database).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_artifact_location_not_writable_keeps_the_run_until_it_is(shell, store, tmp_path, capsys):
    from mlflow import MlflowClient

    import nbtrack

    blocker = tmp_path / "artifacts-here"
    blocker.write_text("a file where the artifact folder should be")
    client = MlflowClient(tracking_uri=store)
    client.create_experiment("art", artifact_location=f"file://{blocker}/store")
    shell.ok("import nbtrack\nimport matplotlib.pyplot as plt")
    shell.ok("%%track -e art -n figure\nfig = plt.figure()\nplt.plot([1, 2, 3])\n"
             "for step in range(3):\n    nbtrack.log_metric('loss', 1.0 / (step + 1))\n"
             "plt.show()")
    assert not nbtrack.flush(timeout=5)  # the artifacts cannot be written: the run waits
    err = capsys.readouterr().err
    assert "artifacts of run 'figure' not written yet" in err and "queued in" in err
    assert len(journal_files(tmp_path / "journal", "*.record")) == 1
    assert len(journal_files(tmp_path / "journal", "*.progress")) == 1

    blocker.unlink()
    assert nbtrack.flush(timeout=120)
    run = runs_by_name(store, "art")["figure"]
    assert run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == [
        "figures/01-figure.png"]
    # The values were written once, before the artifacts failed, and not again after.
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [
        1.0, 0.5, 1.0 / 3]
    assert journal_files(tmp_path / "journal", "*.record") == []


def test_artifact_location_full_keeps_the_run_until_there_is_room(shell, store, tmp_path, capsys,
                                                                   monkeypatch):
    """A full disk is injected (a fake, on purpose: filling a real disk is not something a test
    may do to the machine): MLflow's local artifact repository raises ENOSPC, as copying onto a
    full file system does, until the test frees the "space".
    """
    import errno

    from mlflow import MlflowClient
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    import nbtrack

    disk_full = threading.Event()
    disk_full.set()
    log_artifacts = LocalArtifactRepository.log_artifacts

    def full_disk_log_artifacts(self, local_dir, artifact_path=None):
        if disk_full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.artifact_dir)
        return log_artifacts(self, local_dir, artifact_path)

    monkeypatch.setattr(LocalArtifactRepository, "log_artifacts", full_disk_log_artifacts)
    client = MlflowClient(tracking_uri=store)
    shell.ok("import nbtrack\nimport matplotlib.pyplot as plt")
    result = shell.ok("%%track -e full -n figure\nfig = plt.figure()\nplt.plot([1, 2, 3])\n"
                      "score = 3 / 4\nscore")
    assert result.result == 0.75  # the cell itself is untouched
    assert not nbtrack.flush(timeout=5)
    err = capsys.readouterr().err
    assert "artifacts of run 'figure' not written yet" in err
    assert "No space left on device" in err and "queued in" in err
    assert len(journal_files(tmp_path / "journal", "*.record")) == 1

    disk_full.clear()  # room again
    assert nbtrack.flush(timeout=120)
    run = runs_by_name(store, "full")["figure"]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["score"] == 0.75
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == [
        "figures/01-figure.png"]
    assert "cell/source.py" in [a.path for a in client.list_artifacts(run.info.run_id, "cell")]
    assert journal_files(tmp_path / "journal", "*.record") == []


def test_a_long_series_reaches_the_store_point_for_point(shell, store):
    import nbtrack

    shell.ok("import nbtrack")
    shell.ok("%%track -e series -n loop\n"
             "for step in range(20_000):\n"
             "    nbtrack.log_metric('loss', 1.0 / (step + 1), step=step)\n"
             "    if step % 1000 == 0:\n"
             "        nbtrack.log_metric('lr', 0.1 * 0.9 ** (step // 1000))\n")
    assert nbtrack.flush(timeout=300)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    run_id = nbtrack.last_run()
    loss = client.get_metric_history(run_id, "loss")
    assert len(loss) == 20_000
    assert sorted((m.step, m.value) for m in loss)[:3] == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    lr = sorted(client.get_metric_history(run_id, "lr"), key=lambda m: m.step)
    assert [m.step for m in lr] == list(range(20))


# -- a kernel killed in the middle of a tracked cell ------------------------------------------

def test_a_kernel_starting_never_finds_another_new_kernels_journal_unlocked(tmp_path, monkeypatch):
    """Eight kernels start at once and each looks for ended kernels' journals to recover. The
    interleaving is injected: just as a new kernel locks its folder, another one looks.
    """
    from nbtrack.durable import journal

    real_lock = journal._try_lock
    seen_by_the_other: list[list[str]] = []

    looking = False

    def lock_while_another_kernel_looks(folder):
        nonlocal looking
        if not looking:  # the new kernel is about to lock its own folder: the other looks now
            looking = True
            try:
                found = journal.kernel_folders(tmp_path)
                seen_by_the_other.append([path.name for path in found])
                for path in found:
                    claimed = journal.KernelJournal.claim(path)
                    assert claimed is None, f"{path.name} was taken over while being set up"
            finally:
                looking = False
        return real_lock(folder)

    monkeypatch.setattr(journal, "_try_lock", lock_while_another_kernel_looks)
    first = journal.KernelJournal.create(tmp_path)
    time.sleep(0.002)  # folders are named host-pid-milliseconds: two kernels, two names
    second = journal.KernelJournal.create(tmp_path)
    assert seen_by_the_other == [[], [first.folder.name]]
    assert journal.kernel_folders(tmp_path) == sorted([first.folder, second.folder])
    assert journal.KernelJournal.claim(second.folder) is None
    second.close()
    first.close()
    assert list(tmp_path.iterdir()) == []


def test_series_spool_gives_back_every_point_once_and_ignores_a_frame_cut_short(tmp_path):
    import struct

    from nbtrack.durable.journal import SeriesSpool, read_spool
    from nbtrack.record import Series

    begun = tmp_path / "000000000001000-1-000001.begun"
    series = {"loss": Series("loss")}
    spool = SeriesSpool(begun)
    for step in range(5):
        series["loss"].add(1.0 / (step + 1), step, 1_000 + step)
    spool.write(series)
    series["acc"] = Series("acc")
    series["acc"].add(0.5, 0, 2_000)
    for step in range(5, 8):
        series["loss"].add(1.0 / (step + 1), step, 1_000 + step)
    spool.write(series)
    spool.write(series)  # nothing new: nothing written
    spool.close()
    with open(spool.path, "ab") as file:  # a kernel killed in the middle of a write
        file.write(struct.pack("<Q", 4_000) + b"only the start of a frame")
    back = {points.key: points for points in read_spool(begun)}
    assert list(back["loss"].steps) == list(range(8))
    assert list(back["loss"].values) == [1.0 / (step + 1) for step in range(8)]
    assert list(back["loss"].timestamps_ms) == [1_000 + step for step in range(8)]
    assert (list(back["acc"].steps), list(back["acc"].values)) == ([0], [0.5])
    assert read_spool(tmp_path / "no-such.begun") == []


def start_kernel(cwd: Path, env: dict[str, str]):
    """A real kernel (manager, client) started with ``env`` on top of this environment, without
    NBTRACK_WAIT_FOR_STORE: cells return before the store has their runs, as interactively.
    """
    from jupyter_client.manager import start_new_kernel

    saved = dict(os.environ)
    os.environ.update(env)
    os.environ.pop("NBTRACK_WAIT_FOR_STORE", None)
    try:
        return start_new_kernel(kernel_name="python3", cwd=str(cwd))
    finally:
        os.environ.clear()
        os.environ.update(saved)


DYING_CELL = ("%%track -e crash -n dies\nimport time\nimport nbtrack\nseed = 7\n"
              "for step in range(60_000):  # ten minutes\n"
              "    nbtrack.log_metric('loss', 1.0 / (step + 1), step=step)\n"
              "    time.sleep(0.01)")


def killed_kernel(tmp_path: Path, env: dict[str, str]) -> None:
    """Start a real kernel, track one cell, start a second that trains (logging a point every
    10 ms), SIGKILL the kernel once the journal holds some of those points.
    """
    manager, client = start_kernel(tmp_path, env)
    try:
        for code in ("%load_ext nbtrack",
                     "%%track -e crash -n finished\nalpha = 0.5\nscore = alpha * 2",
                     "import nbtrack\nnbtrack.flush(60)"):
            reply = client.execute_interactive(code, timeout=120)
            assert reply["content"]["status"] == "ok", reply["content"]
        client.execute(DYING_CELL)
        journal = Path(env["NBTRACK_JOURNAL_DIR"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                path.stat().st_size > 0 for path in journal_files(journal, "*.series")):
            time.sleep(0.2)
        assert journal_files(journal, "*.begun"), "the training cell never started"
        assert journal_files(journal, "*.series"), "no points reached the journal"
        time.sleep(1.5)  # a second spool at least
        os.kill(manager.provisioner.process.pid, signal.SIGKILL)
        manager.provisioner.process.wait(timeout=30)
    finally:
        client.stop_channels()
        manager.cleanup_resources()


@pytest.fixture
def kernel_env(tmp_path, store):
    return {"MLFLOW_TRACKING_URI": store, "NBTRACK_JOURNAL_DIR": str(tmp_path / "journal"),
            "MPLBACKEND": "Agg"}


def test_sigkill_mid_cell_then_nbtrack_sync_marks_the_run_killed(tmp_path, store, kernel_env):
    killed_kernel(tmp_path, kernel_env)
    before = runs_by_name(store, "crash")
    assert set(before) == {"finished"}  # the dead cell never reached the store

    done = sync()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "killed  run 'dies'" in done.stdout
    runs = runs_by_name(store, "crash")
    assert runs["finished"].info.status == "FINISHED"
    dies = runs["dies"]
    assert dies.info.status == "KILLED"
    assert "kernel died" in dies.data.tags["nbtrack.killed_reason"]
    assert "time.sleep(0.01)" in dies.data.tags["mlflow.note.content"]
    # The curve up to (about a second before) the kill: every point once, in order, exact.
    from mlflow import MlflowClient

    loss = sorted((m.step, m.value) for m in
                  MlflowClient(tracking_uri=store).get_metric_history(dies.info.run_id, "loss"))
    assert len(loss) >= 100
    assert loss == [(step, 1.0 / (step + 1)) for step in range(len(loss))]
    assert journal_files(tmp_path / "journal", "*") == []


def test_sigkill_mid_cell_then_the_next_kernel_recovers_it(tmp_path, store, kernel_env, shell):
    killed_kernel(tmp_path, kernel_env)
    shell.ok("%%track -e crash -n next\ny = 2")  # the first tracked cell starts recovery
    import nbtrack

    tracker = nbtrack._tracker()
    tracker.queue.recovery.join(timeout=120)
    assert nbtrack.flush(timeout=60)
    runs = runs_by_name(store, "crash")
    assert {name: run.info.status for name, run in runs.items()} == {
        "finished": "FINISHED", "dies": "KILLED", "next": "FINISHED"}


# -- many writers on one SQLite store ---------------------------------------------------------

WRITER_CELLS = [
    "%load_ext nbtrack",
    "%%track -n fit\n"
    "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nimport nbtrack\n"
    "lr = 0.01 * (index + 1)\nepochs = 20\n"
    "for epoch in range(epochs):\n    nbtrack.log_metric('loss', 1.0 / (epoch + 1 + index))\n"
    "score = index * 10 + 0.5\n"
    "fig = plt.figure()\nplt.plot(range(epochs))\nplt.savefig('/dev/null', format='png')",
]


def writer_notebook(folder: Path) -> Path:
    return write_notebook(folder / "writer.ipynb", WRITER_CELLS, parameters="index = 0")


def assert_complete(store: str, experiment: str, indexes: range) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    found = client.get_experiment_by_name(experiment)
    runs = cell_runs(client.search_runs([found.experiment_id]))
    scores = sorted(r.data.metrics.get("score") for r in runs)
    assert scores == [index * 10 + 0.5 for index in indexes]
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags.get("nbtrack.error")
        index = int(run.data.params["index"])
        assert run.data.params["epochs"] == "20" and run.data.metrics["score"] == index * 10 + 0.5
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 20
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"cell", "figures", "lineage"} <= artifacts, artifacts


def test_eight_executions_at_once_with_nbtrack_run_j_8(tmp_path, store):
    notebook = writer_notebook(tmp_path / "project")
    done = nbtrack_cli("run", str(notebook), "--grid", "index=" + ",".join(str(i) for i in range(8)),
                       "-j", "8", "-e", "eight", "--no-progress", cwd=notebook.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_complete(store, "eight", range(8))


def test_eight_nbconvert_processes_at_once(tmp_path, store):
    notebook = writer_notebook(tmp_path / "project")
    env = {**os.environ, "MLFLOW_EXPERIMENT_NAME": "nbconvert-eight"}
    processes = []
    for index in range(8):
        copy = notebook.with_name(f"writer-{index}.ipynb")
        copy.write_text(notebook.read_text().replace("index = 0", f"index = {index}"))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
             "--ExecutePreprocessor.startup_timeout=300", "--output", f"done-{index}.ipynb",
             str(copy)],
            cwd=copy.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        # Kernels launched in the same instant can pick the same free ports (jupyter_client
        # chooses them before the kernel binds them): start them a moment apart. They still all
        # run at once, each takes far longer than this.
        time.sleep(1.5)
    for process in processes:
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output[-3000:]
    for index in range(8):
        executed = (notebook.parent / f"done-{index}.ipynb").read_text()
        assert '"output_type": "error"' not in executed
    assert_complete(store, "nbconvert-eight", range(8))


# -- a tracking server that dies and comes back -----------------------------------------------

def test_tracking_server_killed_and_restarted_mid_session(shell, tmp_path, monkeypatch, capsys):
    from servers import sqlite_http_server

    import nbtrack

    folder = tmp_path / "server"
    folder.mkdir()
    server = sqlite_http_server(folder).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast, nbtrack retries
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        shell.ok("%%track -e served -n up\nscore = float(1.5)")
        assert nbtrack.flush(timeout=120)
        os.killpg(server.process.pid, signal.SIGKILL)  # fault: the server dies mid-session
        server.process.wait(timeout=30)
        for name, value in (("down-1", 2.5), ("down-2", 3.5)):
            result = shell.run(f"%%track -e served -n {name}\nscore = float({value})\nscore")
            assert result.success and result.result == value
        assert not nbtrack.flush(timeout=3)
        assert "queued in" in capsys.readouterr().err
        server.start()  # same port, same store: the queued runs go in, in order
        assert nbtrack.flush(timeout=180)
        runs = runs_by_name(server.url, "served")
        assert {name: run.data.metrics.get("score") for name, run in runs.items()} == {
            "up": 1.5, "down-1": 2.5, "down-2": 3.5}
        assert all(run.info.status == "FINISHED" for run in runs.values())
        assert runs["down-1"].info.start_time < runs["down-2"].info.start_time
    finally:
        server.stop()


def test_a_store_lost_right_after_creating_the_run_leaves_one_run_not_two(shell, store,
                                                                           monkeypatch, capsys):
    """The store takes the run opened before a cell, then fails before it is MLflow's active run
    (a server killed between two requests: a sweep under load met this). The record goes into
    that run: no second run, no empty RUNNING one left behind.
    """
    import mlflow

    real_start_run = mlflow.start_run
    failures = []

    def start_run_once_unreachable(*args, **kwargs):
        # The injected fault: the store is unreachable for the request after create_run.
        if not failures:
            failures.append(1)
            raise ConnectionError("server went away")
        return real_start_run(*args, **kwargs)

    monkeypatch.setattr(mlflow, "start_run", start_run_once_unreachable)
    result = shell.run("%%track -e opened -n own\nimport mlflow\nx = 7\nx")
    assert result.success and result.result == 7 and failures
    assert "could not open run 'own'" in capsys.readouterr().err
    runs = shell.runs("opened")
    assert [(run.info.status, run.data.params.get("x")) for run in runs] == [("FINISHED", "7")]


def sweep_notebook(folder: Path) -> Path:
    return write_notebook(folder / "sweep.ipynb", [
        "%load_ext nbtrack",
        "%%track -n point\nimport time\ntime.sleep(2)\nlr = 0.01 * (index + 1)\n"
        "score = index * 10 + 0.5",
    ], parameters="index = 0")


def test_tracking_server_killed_and_restarted_in_the_middle_of_a_sweep(tmp_path):
    """`nbtrack run` over six points while the server is SIGKILLed after the first runs and
    restarted some seconds later: every execution succeeds, and the store ends with exactly six
    finished runs, one per point, each with its own values.
    """
    from mlflow import MlflowClient
    from servers import sqlite_http_server

    folder = tmp_path / "server"
    folder.mkdir()
    server = sqlite_http_server(folder).start()
    notebook = sweep_notebook(tmp_path / "project")
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
           "NBTRACK_JOURNAL_DIR": str(tmp_path / "journal")}
    env.pop("NBTRACK_WAIT_FOR_STORE", None)
    sweep = subprocess.Popen(
        [sys.executable, "-m", "nbtrack", "run", str(notebook), "--grid", "index=0,1,2,3,4,5",
         "-e", "served-sweep", "--no-progress"],
        cwd=notebook.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = MlflowClient(tracking_uri=server.url)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and sweep.poll() is None:
            experiment = client.get_experiment_by_name("served-sweep")
            if experiment is not None and len(cell_runs(
                    client.search_runs([experiment.experiment_id]))) >= 2:
                break
            time.sleep(0.5)
        assert sweep.poll() is None, "the sweep ended before the server could be killed"
        os.killpg(server.process.pid, signal.SIGKILL)  # fault: the server dies mid-sweep
        server.process.wait(timeout=30)
        time.sleep(15)  # long enough for an execution to meet the dead server
        server.start()  # same port, same store
        output, _ = sweep.communicate(timeout=900)
        assert sweep.returncode == 0, output[-4000:]
        # At least one execution met the dead server (and said so in its cell), and waited.
        executed = [path.read_text() for path in (notebook.parent / "runs").rglob("*.ipynb")]
        assert len(executed) == 6
        assert any("not written yet" in text or "could not open run" in text
                   for text in executed), output[-4000:]
        assert not any("View run" in text for text in executed)  # MLflow's URL lines stay out
        experiment = client.get_experiment_by_name("served-sweep")
        runs = cell_runs(client.search_runs([experiment.experiment_id]))
        assert sorted(int(run.data.params["index"]) for run in runs) == [0, 1, 2, 3, 4, 5]
        for run in runs:
            index = int(run.data.params["index"])
            assert run.info.status == "FINISHED", run.data.tags.get("nbtrack.killed_reason")
            assert run.data.metrics["score"] == index * 10 + 0.5
            assert run.data.metrics["lr"] == 0.01 * (index + 1)
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"cell", "lineage", "notebook"} <= artifacts, (index, artifacts)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait(timeout=30)
        server.stop()


# `nbtrack runs`, with a watcher that only reports: it says on stderr when the command first
# looks at a kernel's journal folder (Python's audit hook on open()); nothing else changes.
WATCHED_RUNS = (
    "import os, sys\n"
    "journal, seen = sys.argv[1], []\n"
    "def watch(event, args):\n"
    "    if event == 'open' and not seen and isinstance(args[0], (str, os.PathLike))\\\n"
    "            and str(os.fspath(args[0])).startswith(journal):\n"
    "        seen.append(1)\n"
    "        print('watcher: looked at the journal', file=sys.stderr, flush=True)\n"
    "sys.addaudithook(watch)\n"
    "from nbtrack.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def test_nbtrack_runs_in_a_shell_sees_a_run_a_kernel_has_just_queued(shell, store, tmp_path):
    """`nbtrack runs` waits for a running kernel's queued run. In order: the run is queued behind
    a write lock (readers may still read), `nbtrack runs` starts and looks at the kernel's
    journal, only then is the lock let go; a command that read at once would miss the run."""
    import nbtrack

    shell.ok("%%track -e fresh -n first\nx = float(1)")
    assert nbtrack.flush(timeout=60)
    database = Path(store[len("sqlite:///"):])
    with write_locked(database, mode="IMMEDIATE"):
        shell.ok("%%track -e fresh -n just-ended\nx = float(2)")  # queued behind the lock
        assert [r.run_name for r in nbtrack.unrecorded()] == ["just-ended"]
        command = subprocess.Popen(
            [sys.executable, "-c", WATCHED_RUNS, str(tmp_path / "journal"),
             "runs", "-e", "fresh", "--format", "csv"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        before_lock_let_go = []  # what the command said on stderr while the lock was held
        for line in command.stderr:  # until it looks at the journal, or ends without looking
            before_lock_let_go.append(line)
            if line.startswith("watcher: looked at the journal"):
                break
    out, err = command.communicate(timeout=300)
    assert command.returncode == 0, err
    assert "just-ended" in out and "first" in out, out
    assert before_lock_let_go[-1:] == ["watcher: looked at the journal\n"], (
        f"`nbtrack runs` never looked at the kernel's journal:\n{''.join(before_lock_let_go)}")


def test_normal_kernel_shutdown_drains_the_queue(tmp_path, store, kernel_env):
    manager, client = start_kernel(tmp_path, kernel_env)
    try:
        for code in ("%load_ext nbtrack",
                     *[f"%%track -e drain -n cell-{i}\nscore = float({i})" for i in range(4)]):
            reply = client.execute_interactive(code, timeout=120)
            assert reply["content"]["status"] == "ok", reply["content"]
        manager.shutdown_kernel(now=False)  # no flush: the kernel's exit drains the queue
    finally:
        client.stop_channels()
        manager.cleanup_resources()
    runs = runs_by_name(store, "drain")
    assert {name: run.data.metrics.get("score") for name, run in runs.items()} == {
        f"cell-{i}": float(i) for i in range(4)}
    assert journal_files(tmp_path / "journal", "*.record") == []


def test_a_run_written_late_with_its_original_times_reaches_the_board_index(store):
    # A queued run is written with the times its cell ran, maybe long before the index's last
    # look: the recorder puts it in the index file, and the next incremental read merges it.
    from mlflow import MlflowClient

    from nbtrack.store import index as run_index
    from nbtrack.store import index_file

    client = MlflowClient(tracking_uri=store)
    experiment_id = client.create_experiment("late")
    index = run_index.RunIndex(store, experiment_id)
    index.refresh()
    hour_ago = int(time.time() * 1000) - 3_600_000
    run = client.create_run(experiment_id, start_time=hour_ago, run_name="replayed")
    client.log_metric(run.info.run_id, "score", 1.0, timestamp=hour_ago)
    client.set_terminated(run.info.run_id, end_time=hour_ago + 1000)
    index.refresh(full=False)
    assert [s.run_id for s in index.summaries()] == []  # outside the incremental window
    index_file.record_runs(store, [client.get_run(run.info.run_id)])  # as the recorder does
    index.refresh(full=False)
    assert [s.run_id for s in index.summaries()] == [run.info.run_id]


def test_unwritable_journal_folder_falls_back_and_the_run_is_recorded(shell, tmp_path, monkeypatch,
                                                                       capsys):
    import nbtrack

    blocked = tmp_path / "journal-file"
    blocked.write_text("a file where the journal folder should be")
    monkeypatch.setenv("NBTRACK_JOURNAL_DIR", str(blocked / "journal"))
    result = shell.run("%%track -e fallback -n kept\nscore = float(3)\nscore")
    assert result.success and result.result == 3.0
    assert "the journal folder is not writable" in capsys.readouterr().err
    assert nbtrack.flush(timeout=60)
    kept = runs_by_name(os.environ["MLFLOW_TRACKING_URI"], "fallback")["kept"]
    assert own_metrics(kept.data.metrics) == {"score": 3.0}


def ended_kernel_with_a_running_cell(root: Path, store: str) -> Path:
    """A journal folder as a SIGKILLed kernel leaves it: one cell begun, never ended, no run."""
    from nbtrack.durable.journal import KernelJournal
    from nbtrack.durable.writer import begun_facts

    journal = KernelJournal.create(root)
    journal.begun(1_700_000_000_000, begun_facts(store, "recovered", "dies", 1_700_000_000_000,
                                                 {"nbtrack.notebook": "nb.ipynb"}, "x = 1", None))
    journal.close()  # the lock goes as the process would; the .begun note stays
    return journal.folder


def test_a_journal_another_kernel_removed_meanwhile_is_skipped_not_an_error(tmp_path):
    from nbtrack.durable.journal import KernelJournal

    folder = tmp_path / "gone"
    folder.mkdir()
    folder.rmdir()  # listed by one recovering kernel, then recovered and removed by another
    assert KernelJournal.claim(folder) is None


def test_a_recovery_cut_short_after_making_the_killed_run_leaves_no_second_run(tmp_path, store):
    from nbtrack.durable.writer import recover
    from nbtrack.store.recorder import Recorder

    root = tmp_path / "journal"
    ended_kernel_with_a_running_cell(root, store)

    class ExitsAfterMakingTheRun(Recorder):  # injected fault: the recovering kernel exits there
        def record_killed(self, facts, reason, series=(), on_created=None):
            def made_then_exits(run_id):
                on_created(run_id)
                raise KeyboardInterrupt

            return super().record_killed(facts, reason, series, on_created=made_then_exits)

    with pytest.raises(KeyboardInterrupt):
        recover(ExitsAfterMakingTheRun, root=root)
    assert [r.info.status for r in runs_by_name(store, "recovered").values()] == ["RUNNING"]
    result = recover(Recorder, root=root)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("recovered").experiment_id])
    assert len(result.killed) == 1
    assert [(r.info.run_name, r.info.status) for r in runs] == [("dies", "KILLED")]
