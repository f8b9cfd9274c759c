"""The command line on real notebooks executed by real kernels."""

from __future__ import annotations

import json

from conftest import SHOWCASE, nbtrack_cli, write_notebook


def test_help_on_every_command(tmp_path):
    for args in (["--help"], ["run", "--help"], ["runs", "--help"]):
        done = nbtrack_cli(*args, cwd=tmp_path, check=True)
        assert "usage: nbtrack" in done.stdout
    assert "Exit codes" in nbtrack_cli("--help", cwd=tmp_path).stdout


def test_missing_notebook_is_one_line_and_exit_2(store, tmp_path):
    done = nbtrack_cli("run", "nope.ipynb", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "nbtrack run: notebook 'nope.ipynb' not found."


def test_run_executes_tracks_and_prints_the_board(store, client, tmp_path):
    folder = tmp_path / "proj"
    folder.mkdir()
    write_notebook(folder / "sweep.ipynb", [
        "%load_ext nbtrack",
        "%%track -n small\nalpha = 0.5\nscore = alpha * 2",
        "%%track -n large\nalpha = 2.0\nscore = alpha * 2",
    ])
    done = nbtrack_cli("run", "sweep.ipynb", "-e", "cli-exp", "--no-progress", cwd=folder, check=True)
    lines = done.stdout.splitlines()
    caption = "experiment 'cli-exp', this run's executions, ranked by score"
    board = lines[lines.index(caption) + 1:]
    assert board[1].split()[:2] == ["1", "large"] and board[2].split()[:2] == ["2", "small"]
    assert (folder / "runs" / "sweep-01.ipynb").exists()
    runs = client.search_runs([client.get_experiment_by_name("cli-exp").experiment_id])
    assert {r.data.tags["mlflow.runName"] for r in runs} == {"small", "large"}
    for run in runs:
        assert run.data.tags["nbtrack.notebook"] == str(folder / "sweep.ipynb")
        assert run.data.tags["nbtrack.batch"] == "nbtrack run"

    as_json = json.loads(nbtrack_cli("runs", "-e", "cli-exp", "--format", "json", cwd=folder,
                                 check=True).stdout)
    assert [row["run"] for row in as_json] == ["large", "small"]
    as_csv = nbtrack_cli("runs", "-e", "cli-exp", "-m", "score", "--asc", "--format", "csv",
                     cwd=folder, check=True).stdout.splitlines()
    assert as_csv[0].startswith("rank,run,") and as_csv[1].startswith("1,small,")


def test_runs_with_unknown_metric_or_experiment_is_a_clear_error(store, client, tmp_path):
    done = nbtrack_cli("runs", "-e", "does-not-exist", cwd=tmp_path)
    assert done.returncode == 2 and "no experiment named 'does-not-exist'" in done.stderr
    assert "Traceback" not in done.stderr

    experiment_id = client.create_experiment("has-runs")
    for score in (0.5, 0.7):
        with_metric = client.create_run(experiment_id).info.run_id
        client.log_metric(with_metric, "score", score)
        client.set_terminated(with_metric)
    done = nbtrack_cli("runs", "-e", "has-runs", "-m", "val_auc", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "nbtrack runs: no run has a metric 'val_auc'; metrics here: score."], done.stderr


def test_quickstart_main_job_on_the_showcase(store, client, tmp_path):
    done = nbtrack_cli("run", str(SHOWCASE), "-o", str(tmp_path / "out"), "-e", "showcase",
                   "-m", "val_auc", "--no-progress", cwd=tmp_path, check=True)
    assert "ranked by val_auc" in done.stdout
    names = {r.data.tags["mlflow.runName"] for r in client.search_runs(
        [client.get_experiment_by_name("showcase").experiment_id])}
    assert {"logreg-C0.01", "logreg-C0.1", "logreg-C1.0", "random-forest", "sgd-epochs"} <= names
