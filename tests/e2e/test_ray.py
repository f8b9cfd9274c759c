"""nbtrack run --engine ray: executions as tasks on a real local Ray cluster the test starts
(``ray start --head`` with two CPUs, so two worker processes run executions at once).

Every server here listens on 127.0.0.1 only: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray's
processes bind the loopback address (by default they bind every interface). The cluster is
stopped when the module's tests end.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import cell_runs, nbtrack_cli, write_notebook
from servers import RAY_ENV, local_ray_cluster

# Each point's first attempt may die on purpose: its kernel ('die') or the Ray worker running
# the notebook, its kernel's parent ('worker'). The file `marker-<C>` says the first attempt ran.
CELLS = [
    "%load_ext nbtrack",
    "%%track -n fit\n"
    "import os, signal\n"
    "first = not os.path.exists(f'{marker}-{C}')\n"
    "parent = open(f'/proc/{os.getppid()}/cmdline').read().split(chr(0))[0]\n"
    "open(f'{marker}-{C}', 'a').write(parent + '\\n')\n"
    "if C == 'die' and first:\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    "if C == 'worker' and first:\n    os.kill(os.getppid(), signal.SIGKILL)\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "score = (C if isinstance(C, (int, float)) else 7) * 10 + seed",
]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local cluster of two CPUs, stopped when the module's tests end; its address."""
    with local_ray_cluster(tmp_path_factory.mktemp("ray")) as address:
        yield address


@pytest.fixture
def notebook(tmp_path, store):
    return write_notebook(tmp_path / "project" / "sweep.ipynb", CELLS,
                          parameters=f"C = 1.0\nseed = 0\nmarker = '{tmp_path / 'marker'}'")


def ray_cli(*args, cwd):
    return nbtrack_cli("run", *args, "--no-progress", cwd=cwd, env=RAY_ENV)


def test_a_grid_runs_as_ray_tasks_and_killed_executions_are_retried(ray_cluster, notebook,
                                                                    client, tmp_path):
    """Fault: a kernel and a Ray worker are SIGKILLed mid-execution (the notebook does it on its
    first attempt); with --retries 1 each is run again and the sweep ends with every point done.
    """
    done = ray_cli("sweep.ipynb", "--grid", "C=1,2,'die','worker'", "-p", "seed=5",
                   "--engine", "ray", "--address", ray_cluster, "--retries", "1", "-e", "ray",
                   cwd=notebook.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {re.search(r"\(seed=5, C=(\w+)\)", line).group(1): line
             for line in done.stdout.splitlines() if line.startswith("ok ")}
    assert set(lines) == {"1", "2", "die", "worker"}, done.stdout
    assert "run 2 times: attempt 1 KILLED (the kernel died" in lines["die"]
    assert "run 2 times: attempt 1 KILLED (its Ray worker died (WorkerCrashedError" in lines[
        "worker"]
    assert "attempt" not in lines["1"] and "attempt" not in lines["2"]

    experiment = client.get_experiment_by_name("ray")
    every = client.search_runs([experiment.experiment_id])
    runs = cell_runs(every)
    finished = {r.data.params["C"]: r for r in runs if r.info.status == "FINISHED"}
    assert sorted(finished) == ["1", "2", "die", "worker"]
    assert finished["2"].data.metrics["score"] == 25.0
    assert finished["worker"].data.metrics["score"] == 75.0
    killed = {r.data.params["C"]: r for r in runs if r.info.status == "KILLED"}
    assert sorted(killed) == ["die", "worker"]  # the first attempts' runs, ended by the driver
    assert "kernel died" in killed["die"].data.tags["nbtrack.killed_reason"]
    assert "Ray worker died" in killed["worker"].data.tags["nbtrack.killed_reason"]
    assert (killed["die"].data.tags["nbtrack.execution"]
            != finished["die"].data.tags["nbtrack.execution"])  # the retry's own execution id
    [parent] = [r for r in every if "nbtrack.sweep_parent" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    # The executed notebooks came back from the workers, and went to the store with the runs.
    for run in finished.values():
        [logged] = client.list_artifacts(run.info.run_id, "notebook")
        assert Path(client.download_artifacts(run.info.run_id, logged.path)).stat().st_size > 0
    assert len(list((notebook.parent / "runs").rglob("*.ipynb"))) == 4
    # The notebooks ran in Ray's worker processes (their kernels' parent, which the notebook
    # wrote down), not in nbtrack's local workers: Ray names its worker processes ray::...
    assert (tmp_path / "marker-1").read_text().startswith("ray::"), (tmp_path / "marker-1")


def test_a_search_runs_its_trials_on_ray(ray_cluster, notebook, client):
    done = ray_cli("sweep.ipynb", "--search", "C=uniform(0, 4)", "--trials", "4", "--objective",
                   "score", "--seed", "1", "--engine", "ray", "--address", ray_cluster,
                   "--cpus-per-trial", "1", "-e", "raysearch", cwd=notebook.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = cell_runs(client.search_runs(
        [client.get_experiment_by_name("raysearch").experiment_id]))
    assert sorted(int(r.data.tags["nbtrack.trial"]) for r in runs) == [0, 1, 2, 3]
    best = max(runs, key=lambda r: r.data.metrics["score"])
    assert f"best: trial {best.data.tags['nbtrack.trial']}, score=" in done.stdout


def test_a_request_no_machine_can_meet_is_refused_before_anything_runs(ray_cluster, notebook,
                                                                       client):
    done = ray_cli("sweep.ipynb", "--grid", "C=1,2", "--engine", "ray", "--address", ray_cluster,
                   "--cpus-per-trial", "3", "-e", "toobig", cwd=notebook.parent)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--cpus-per-trial 3 --gpus-per-trial 0: no machine of the Ray cluster has that much " \
           "(the most on one: 2 CPUs, 0 GPUs)" in done.stderr
    assert client.get_experiment_by_name("toobig") is None or not client.search_runs(
        [client.get_experiment_by_name("toobig").experiment_id])


@pytest.mark.parametrize("args, message", [
    (["--address", "auto"], "--address only go with --engine ray"),
    (["--cpus-per-trial", "2", "--gpus-per-trial", "1"],
     "--cpus-per-trial, --gpus-per-trial only go with --engine ray"),
    (["--engine", "ray", "--cpus-per-trial", "-1"], "--cpus-per-trial takes 0 or a positive"),
    (["--engine", "ray", "--cpus-per-trial", "0"], "--cpus-per-trial 0 needs --gpus-per-trial"),
    (["--retries", "-1"], "--retries takes 0 or a positive number"),
])
def test_engine_options_that_do_not_fit_are_one_line_errors(notebook, args, message):
    done = ray_cli("sweep.ipynb", *args, cwd=notebook.parent)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_without_ray_installed_the_engine_says_how_to_get_it(notebook, tmp_path):
    """Fault injected: a `ray` package that fails to import stands first on the path."""
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    done = nbtrack_cli("run", "sweep.ipynb", "--engine", "ray", "--no-progress",
                       cwd=notebook.parent, env={"PYTHONPATH": str(fake.parent)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--engine ray needs Ray, which is not installed here: pip install 'nbtrack[ray]'." \
        in done.stderr


@pytest.mark.parametrize("any_store", ["http-postgres"], indirect=True)
def test_a_grid_on_ray_writes_to_the_team_server_as_its_user(ray_cluster, any_store, tmp_path):
    """The README's team set-up: Ray's workers write to the team server (PostgreSQL, proxied
    artifacts, basic-auth) as the user who ran `nbtrack run`. In a run of the whole module the
    cluster started before this test logged in as alice, with another test's store in its
    environment: only what the driver forwards (MLFLOW_TRACKING_URI, alice's credentials) can
    bring the runs here.
    """
    from mlflow import MlflowClient

    experiment = any_store.name("rayteam")
    write_notebook(Path.cwd() / "team.ipynb", [
        "%load_ext nbtrack", "%%track -n fit\nscore = C * 10",
        "import nbtrack\nnbtrack.flush(120)"], parameters="C = 1.0")
    done = ray_cli("team.ipynb", "--grid", "C=1,2", "--engine", "ray", "--address", ray_cluster,
                   "-e", experiment, cwd=Path.cwd())
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient()
    runs = cell_runs(client.search_runs([client.get_experiment_by_name(experiment).experiment_id]))
    assert sorted((r.data.params["C"], r.data.metrics["score"], r.info.status) for r in runs) == [
        ("1", 10.0, "FINISHED"), ("2", 20.0, "FINISHED")]
    for run in runs:
        assert run.data.tags["mlflow.user"] == "alice"
        [logged] = client.list_artifacts(run.info.run_id, "notebook")  # through the server's proxy
        assert logged.path.endswith(".ipynb")
