"""nbtrack run --search: Optuna over real tracked executions in real kernels."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import cell_runs, nbtrack_cli, write_notebook

# A score whose best is at x = 2 and depth = 3: a search should find its region.
CELLS = ["%load_ext nbtrack",
         "%%track -n fit\nscore = 10 - (x - 2) ** 2 - abs(depth - 3)\nloss = -score"]


@pytest.fixture
def notebook(tmp_path, store):
    return write_notebook(tmp_path / "project" / "search.ipynb", CELLS,
                          parameters="x = 0.0\ndepth = 1\nkind = 'a'")


def test_search_runs_trials_tagged_with_their_number_and_finds_a_good_point(notebook, client):
    done = nbtrack_cli("run", "search.ipynb", "--search", "x=uniform(-4, 4)",
                       "--search", "depth=int(1, 6)", "--grid", "kind=a,b", "-p", "unused=1",
                       "--trials", "6", "--objective", "score", "--sampler", "random",
                       "--seed", "3", "-j", "2", "-e", "opt", "--no-progress",
                       cwd=notebook.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    experiment = client.get_experiment_by_name("opt")
    every = client.search_runs([experiment.experiment_id])
    runs = cell_runs(every)
    assert sorted(int(r.data.tags["nbtrack.trial"]) for r in runs) == list(range(6))
    # One parent run for the search: its space, sampler and best trial; the trials its children.
    [parent] = [r for r in every if "nbtrack.sweep_parent" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert parent.data.params["search.x"] == "uniform(-4, 4)"
    assert parent.data.params["sampler"] == "random" and parent.data.params["objective"] == "score"
    assert parent.data.metrics["trials_complete"] == 6
    assert parent.data.metrics["best_score"] == max(r.data.metrics["score"] for r in runs)
    for run in runs:  # each trial's values are the ones its run saw
        x, depth = float(run.data.params["x"]), int(run.data.params["depth"])
        assert -4 <= x <= 4 and 1 <= depth <= 6 and run.data.params["kind"] in ("a", "b")
        assert run.data.metrics["score"] == pytest.approx(10 - (x - 2) ** 2 - abs(depth - 3))
    best = max(runs, key=lambda r: r.data.metrics["score"])
    assert f"best: trial {best.data.tags['nbtrack.trial']}, score=" in done.stdout
    assert done.stdout.count("\ntrial ") + done.stdout.startswith("trial ") == 6
    board = done.stdout[done.stdout.index("this search's trials"):].splitlines()
    assert len([line for line in board[2:] if line[:1].isdigit()]) == 6  # not the parent run
    executed = list((notebook.parent / "runs").rglob("*.ipynb"))
    assert len(executed) == 6 and all("-trial-" in p.name for p in executed)
    # nbtrack runs --sweep ID: that search's trials, ranked by its objective
    listed = nbtrack_cli("runs", "-e", "opt", "--sweep", parent.data.tags["nbtrack.sweep"],
                         "--format", "csv", cwd=notebook.parent, check=True)
    header, first = listed.stdout.splitlines()[:2]
    score_column = header.split(",").index("score")
    assert float(first.split(",")[score_column]) == best.data.metrics["score"]


def test_minimize_picks_the_lowest_objective_as_best(notebook, client):
    # A run of the same experiment outside the search, better than any trial: the sweep's board
    # must leave it out.
    outsider = client.create_run(client.create_experiment("min"), run_name="outsider")
    client.log_metric(outsider.info.run_id, "loss", -1000.0)
    client.set_terminated(outsider.info.run_id)
    done = nbtrack_cli("run", "search.ipynb", "--search", "x=uniform(-4, 4)", "--trials", "3",
                       "--objective", "loss", "--minimize", "--seed", "1", "-e", "min",
                       "--no-progress", cwd=notebook.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    losses = [float(line.rsplit("loss=", 1)[1]) for line in done.stdout.splitlines()
              if line.startswith("trial ")]
    best = next(line for line in done.stdout.splitlines() if line.startswith("best:"))
    assert len(losses) == 3 and f"loss={min(losses):.6g} " in best

    # The board shows one sweep: its trials only, ranked by its objective lowest first, the
    # best trial's run marked; the sweep menu lists it.
    from nbtrack.board.widget import Leaderboard

    [parent] = client.search_runs([outsider.info.experiment_id],
                                  filter_string="tags.`nbtrack.sweep_parent` = 'true'")
    sweep = parent.data.tags["nbtrack.sweep"]
    board = Leaderboard(experiment="min", sweep=sweep)
    assert board.metric == "loss" and board.ascending
    assert list(board.runs["loss"]) == pytest.approx(sorted(losses), rel=1e-5)
    assert outsider.info.run_id not in set(board.runs["run_id"])
    best_run = board.runs["run_id"][0]
    assert client.get_run(best_run).data.tags["nbtrack.trial"] == parent.data.tags[
        "nbtrack.best_trial"]
    assert board._best == {best_run}
    assert '<tr class="nbtrack-best"><td>1</td><td>\u25c6 ' in board.static_html()
    assert f"its best trial ({parent.data.tags['nbtrack.best_trial']})" in board.static_html()
    assert any(value == sweep for _, value in board.sweep_choice.options)
    board.sweep_choice.value = ""  # all runs again: the outsider leads
    assert board.runs["run_id"][0] == outsider.info.run_id and not board._best


def test_a_search_whose_driver_is_killed_resumes_with_the_same_command(tmp_path, store, client):
    """The driver and its kernel SIGKILLed while the third of four trials runs: the same command
    runs only what is missing (the killed trial's values asked again), one sweep, one parent run.
    """
    notebook = write_notebook(tmp_path / "project" / "slow.ipynb", [
        "%load_ext nbtrack",
        "%%track -n fit\nimport time\ntime.sleep(4)\nscore = 10 - (x - 2) ** 2"],
        parameters="x = 0.0")
    command = ["run", "slow.ipynb", "--search", "x=uniform(-4, 4)", "--trials", "4",
               "--objective", "score", "--seed", "5", "-e", "resume", "--no-progress"]
    driver = subprocess.Popen([sys.executable, "-m", "nbtrack", *command], cwd=notebook.parent,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and driver.poll() is None:
            found = client.get_experiment_by_name("resume")
            runs = cell_runs(client.search_runs([found.experiment_id])) if found else []
            if (sum(r.info.status == "FINISHED" for r in runs) == 2
                    and any(r.info.status == "RUNNING" for r in runs)):
                break
            time.sleep(0.3)
        assert driver.poll() is None, driver.communicate()[0][-3000:]
        os.killpg(driver.pid, signal.SIGKILL)  # fault: the driver (and its kernel) die mid-trial
    finally:
        driver.wait(timeout=60)
    time.sleep(3)  # the orphaned kernel sees its parent gone and exits

    done = nbtrack_cli(*command, cwd=notebook.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming search slow-search-" in done.stderr
    assert "2 trial(s) finished before, 1 interrupted (asked again), 2 to go" in done.stderr
    experiment = client.get_experiment_by_name("resume")
    every = client.search_runs([experiment.experiment_id])
    runs = cell_runs(every)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    [killed] = [r for r in runs if r.info.status == "KILLED"]
    assert len(finished) == 4 and len(runs) == 5
    assert "driver stopped" in killed.data.tags["nbtrack.killed_reason"]
    # Trials 0 and 1 ran once; the killed trial's x ran again, as a later trial.
    trial_of = {r.info.run_id: int(r.data.tags["nbtrack.trial"]) for r in runs}
    assert sorted(trial_of[r.info.run_id] for r in finished)[:2] == [0, 1]
    assert trial_of[killed.info.run_id] == 2
    assert killed.data.params["x"] in {r.data.params["x"] for r in finished
                                       if trial_of[r.info.run_id] > 2}
    # The resumed sampler draws new values, not the first trials' again (same --seed).
    before = {r.data.params["x"] for r in runs if trial_of[r.info.run_id] <= 2}
    assert len([r for r in finished if r.data.params["x"] not in before]) == 1
    # One sweep, one parent run, told how it went.
    [parent] = [r for r in every if "nbtrack.sweep_parent" in r.data.tags]
    assert {r.data.tags["nbtrack.sweep"] for r in runs} == {parent.data.tags["nbtrack.sweep"]}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_complete"] == 4
    assert parent.data.metrics["trials_interrupted"] == 1
    assert done.stdout.count("(earlier)") == 2

    again = nbtrack_cli(*command, cwd=notebook.parent)  # finished: nothing runs again
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 trial(s) finished before, 0 interrupted (asked again), 0 to go" in again.stderr
    assert len(cell_runs(client.search_runs([experiment.experiment_id]))) == 5


def test_ctrl_c_stops_a_search_with_one_line_and_the_same_command_resumes_it(tmp_path, store,
                                                                           client):
    notebook = write_notebook(tmp_path / "project" / "slow.ipynb", [
        "%load_ext nbtrack", "%%track -n fit\nimport time\ntime.sleep(30)\nscore = x"],
        parameters="x = 0.0")
    command = ["run", "slow.ipynb", "--search", "x=uniform(-4, 4)", "--trials", "1",
               "--objective", "score", "-e", "ctrl-c", "--no-progress"]
    # A shell's Ctrl-C: SIGINT to the command's process group (not ignored, as it would be in
    # a background job).
    driver = subprocess.Popen([sys.executable, "-m", "nbtrack", *command], cwd=notebook.parent,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            found = client.get_experiment_by_name("ctrl-c")
            if found and any(r.info.status == "RUNNING"
                             for r in cell_runs(client.search_runs([found.experiment_id]))):
                break
            time.sleep(0.3)
        os.killpg(driver.pid, signal.SIGINT)
        out, err = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 130, out + err
    assert "nbtrack run: interrupted; the same command resumes a search" in err
    assert "Traceback" not in err
    time.sleep(3)  # the interrupted kernel sees its parent gone and exits

    quick = write_notebook(notebook, ["%load_ext nbtrack", "%%track -n fit\nscore = x"],
                           parameters="x = 0.0")
    done = nbtrack_cli(*command, cwd=quick.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 trial(s) finished before, 1 interrupted (asked again), 1 to go" in done.stderr
    runs = cell_runs(client.search_runs([client.get_experiment_by_name("ctrl-c").experiment_id]))
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]


def trial_runs(client, experiment: str) -> tuple[list, dict]:
    """Every run of a search's experiment, and its cells' runs by trial number."""
    every = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return every, {int(r.data.tags["nbtrack.trial"]): r for r in cell_runs(every)}


def test_prune_stops_trials_behind_the_median_and_keeps_their_points(tmp_path, store, client):
    """Trials 0 and 1 climb fast; later ones slowly (the curve depends on the trial number, so the
    test knows which fall behind). With --prune after two trials, the slow ones stop early, end
    KILLED with nbtrack.pruned=true and the points logged before the stop; the search goes on.
    """
    notebook = write_notebook(tmp_path / "project" / "curve.ipynb", [
        "%load_ext nbtrack",
        "%%track -n fit\nimport os, time\nimport nbtrack\n"
        "rate = 1.0 if int(os.environ['NBTRACK_TRIAL']) < 2 else 0.1\n"
        "for step in range(12):\n"
        "    nbtrack.log_metric('score', rate * (step + 1), step=step)\n"
        "    time.sleep(0.4)\n"
        "score = rate * 12"], parameters="x = 0.0")
    done = nbtrack_cli("run", "curve.ipynb", "--search", "x=uniform(0, 1)", "--trials", "4",
                       "--objective", "score", "--prune", "--prune-startup", "2", "--seed", "1",
                       "-e", "pruned", "--no-progress", cwd=notebook.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    every, runs = trial_runs(client, "pruned")
    assert sorted(runs) == [0, 1, 2, 3]
    for number in (0, 1):
        assert runs[number].info.status == "FINISHED" and "nbtrack.pruned" not in runs[number].data.tags
        assert len(client.get_metric_history(runs[number].info.run_id, "score")) == 12
    for number in (2, 3):
        run = runs[number]
        assert run.info.status == "KILLED" and run.data.tags["nbtrack.pruned"] == "true"
        points = client.get_metric_history(run.info.run_id, "score")
        assert 1 <= len(points) < 12  # stopped early, the points before the stop kept
        assert sorted((p.step, p.value) for p in points) == [
            (step, pytest.approx(0.1 * (step + 1))) for step in range(len(points))]
        assert f"trial {number:<3} PRUNED" in done.stdout
    [parent] = [r for r in every if "nbtrack.sweep_parent" in r.data.tags]
    assert parent.data.metrics["trials_pruned"] == 2 and parent.data.metrics["trials_complete"] == 2
    assert parent.data.params["pruner"] == "median"
    assert "best: trial 0, score=12" in done.stdout or "best: trial 1, score=12" in done.stdout


def test_prune_hears_a_frameworks_curve_while_it_trains(tmp_path, store, client):
    """The objective is Keras's own per-epoch loss (no log_metric in the notebook). Trials 0 and
    1 learn (learning rate 0.05), later ones cannot (0): with --prune after two trials, the
    later ones are stopped mid-fit, from inside Keras's epoch loop, and end PRUNED.
    """
    notebook = write_notebook(tmp_path / "project" / "keras.ipynb", [
        "%load_ext nbtrack",
        "import os\nos.environ['KERAS_BACKEND'] = 'torch'\nimport keras",
        "%%track -n fit\nimport time\nfrom sklearn.datasets import load_breast_cancer\n"
        "from sklearn.preprocessing import StandardScaler\n"
        "X, y = load_breast_cancer(return_X_y=True)\nX = StandardScaler().fit_transform(X)\n"
        "keras.utils.set_random_seed(0)\n"
        "rate = 0.05 if int(os.environ['NBTRACK_TRIAL']) < 2 else 0.0\n"
        "model = keras.Sequential([keras.Input(shape=(30,)), keras.layers.Dense(1, "
        "activation='sigmoid')])\n"
        "model.compile(optimizer=keras.optimizers.SGD(learning_rate=rate), "
        "loss='binary_crossentropy')\n"
        "model.fit(X, y, epochs=12, batch_size=64, verbose=0, callbacks=[\n"
        "    keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(0.6))])",
    ], parameters="x = 0.0")
    done = nbtrack_cli("run", "keras.ipynb", "--search", "x=uniform(0, 1)", "--trials", "4",
                       "--objective", "loss", "--minimize", "--prune", "--prune-startup", "2",
                       "-j", "2", "-e", "keras-pruned", "--no-progress", cwd=notebook.parent,
                       env={"KERAS_BACKEND": "torch"})
    assert done.returncode == 0, done.stdout + done.stderr
    every, runs = trial_runs(client, "keras-pruned")
    assert sorted(runs) == [0, 1, 2, 3]
    for number in (0, 1):
        assert runs[number].info.status == "FINISHED", done.stdout
    for number in (2, 3):
        assert runs[number].info.status == "KILLED", done.stdout
        assert runs[number].data.tags["nbtrack.pruned"] == "true"
        assert f"trial {number:<3} PRUNED" in done.stdout
    [parent] = [r for r in every if "nbtrack.sweep_parent" in r.data.tags]
    assert parent.data.metrics["trials_pruned"] == 2


@pytest.mark.parametrize("args, message", [
    (["--search", "x=normal(0,1)"], "is not a distribution"),
    (["--search", "x=uniform(3,1)"], "needs a < b"),
    (["--search", "x=loguniform(0,1)"], "needs a > 0"),
    (["--search", "x=int(1.5,3)"], "whole numbers"),
    (["--search", "nope=uniform(0,1)"], "'nope' not set in the notebook's parameters cell"),
    (["--search", "x=uniform(0,1)", "--objective", ""], "needs --objective"),
    (["--search", "x=uniform(0,1)", "--trials", "0"], "positive number"),
])
def test_bad_search_specs_fail_before_anything_runs(notebook, args, message):
    full = ["run", "search.ipynb", *args, "--no-progress"]
    if "--objective" not in args:
        full += ["--objective", "score"]
    done = nbtrack_cli(*full, cwd=notebook.parent)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert message in line, line
    assert not (notebook.parent / "runs").exists()
