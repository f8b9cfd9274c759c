"""Runs the store did not accept are kept on disk and recorded later, with their original times."""

from __future__ import annotations

import subprocess
import sys


def test_unavailable_store_keeps_the_run_on_disk_and_the_next_cell_records_it(
        shell, tmp_path, monkeypatch, capsys):
    import nbtrack

    # A file where the store's folder should be: neither SQLite nor MLflow can open the store.
    (tmp_path / "not-yet").write_text("in the way")
    missing = tmp_path / "not-yet" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    result = shell.run("%%track -e kept -n offline\nrate = 0.5\nscore = rate * 2\nscore")
    assert result.success and result.result == 1.0
    err = capsys.readouterr().err
    assert "run 'offline' not recorded" in err and "is kept in" in err
    kept = list((tmp_path / "journal").glob("*.record"))
    assert len(kept) == 1
    assert [r.run_name for r in nbtrack.unrecorded()] == ["offline"]
    started = nbtrack.unrecorded()[0].start_time_ms

    missing.parent.unlink()  # the store is back
    shell.ok("%%track -e kept -n online\nx = 1")
    out = capsys.readouterr().out
    assert "recorded 1 run(s) kept while the store was unavailable: 'offline'" in out
    assert list((tmp_path / "journal").glob("*.record")) == []
    assert nbtrack.unrecorded() == []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{missing}")
    experiment = client.get_experiment_by_name("kept")
    runs = {r.data.tags["mlflow.runName"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"offline", "online"}
    assert runs["offline"].info.start_time == started
    assert runs["offline"].data.params["rate"] == "0.5"
    assert runs["offline"].data.metrics["score"] == 1.0


def test_nbtrack_sync_pushes_kept_runs_and_says_what_is_pending(shell, tmp_path, monkeypatch):
    import os

    (tmp_path / "later").write_text("in the way")
    missing = tmp_path / "later" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    shell.ok("%%track -e kept -n first\na = 1")
    shell.ok("%%track -e kept -n second\nb = 2")

    def sync():
        return subprocess.run([sys.executable, "-m", "nbtrack", "sync"], capture_output=True,
                              text=True, env=dict(os.environ), timeout=300)

    still = sync()
    assert still.returncode == 1
    assert f"pending 2 run(s) for sqlite:///{missing}" in still.stdout
    missing.parent.unlink()
    done = sync()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("pushed  run 'first'") and lines[1].startswith("pushed  run 'second'")
    assert lines[-1] == "all kept runs are recorded"
    assert sync().stdout.strip().startswith("nothing to sync")
