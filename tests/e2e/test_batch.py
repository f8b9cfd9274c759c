"""Headless execution: `nbtrack run` sweeps, `promote`, `ui`, and plain nbconvert, on real kernels."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest
from conftest import cell_runs, nbtrack_cli, write_notebook

SWEEP_CELLS = [
    "%load_ext nbtrack",
    "%%track -n fit\n"
    "import os, signal\n"
    "if C == 'die':\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    "if C == 'worker':\n    os.kill(os.getppid(), signal.SIGKILL)\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "if C == 'boom':\n    raise ValueError('C must be a number')\n"
    "score = C * 10 + seed",
]


@pytest.fixture
def sweep_notebook(tmp_path, store):
    folder = tmp_path / "project"
    return write_notebook(folder / "sweep.ipynb", SWEEP_CELLS, parameters="C = 1.0\nseed = 0")


def experiment_runs(client, name):
    experiment = client.get_experiment_by_name(name)
    return cell_runs(client.search_runs([experiment.experiment_id])) if experiment else []


def test_grid_with_two_jobs_runs_every_point_with_its_params_and_notebook(sweep_notebook,
                                                                          client):
    done = nbtrack_cli("run", "sweep.ipynb", "-p", "seed=5", "--grid", "C=0.1,0.2,0.3", "-j", "2",
                   "-e", "sweep", cwd=sweep_notebook.parent)
    assert done.returncode == 0, done.stderr
    assert "executions: 100%" in done.stderr  # the progress bar
    runs = experiment_runs(client, "sweep")
    assert sorted(r.data.params["C"] for r in runs) == ["0.1", "0.2", "0.3"]
    assert {r.data.params["seed"] for r in runs} == {"5"}
    assert sorted(r.data.metrics["score"] for r in runs) == pytest.approx([6.0, 7.0, 8.0])
    assert len({r.data.tags["nbtrack.sweep"] for r in runs}) == 1
    assert len({r.data.tags["nbtrack.execution"] for r in runs}) == 3
    for run in runs:
        assert run.data.tags["nbtrack.batch"] == "nbtrack run"
        assert run.info.status == "FINISHED"
        notebooks = [a.path for a in client.list_artifacts(run.info.run_id, "notebook")]
        assert len(notebooks) == 1
        executed = nbformat.read(client.download_artifacts(run.info.run_id, notebooks[0]), 4)
        injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert f"C = {run.data.params['C']}" in injected[0].source
        assert any(o.get("text", "").startswith("nbtrack: run 'fit'")
                   for c in executed.cells for o in c.get("outputs", []))
    board = done.stdout[done.stdout.index("this run's executions"):].splitlines()
    assert [line.split()[0] for line in board[2:5]] == ["1", "2", "3"]
    assert board[2].split()[1] == "fit" and "0.3" in board[2]
    assert len([line for line in board[2:] if line[:1].isdigit()]) == 3  # not the sweep's parent
    # One parent run for the sweep, its executions' runs its children (the MLflow UI groups them).
    [parent] = [r for r in client.search_runs([runs[0].info.experiment_id])
                if "nbtrack.sweep_parent" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert parent.data.params["grid.C"] == "0.1,0.2,0.3" and parent.data.params["fixed.seed"] == "5"
    assert parent.data.metrics["executions_ok"] == 3 and parent.info.status == "FINISHED"


def test_failed_and_killed_executions_leave_the_others_and_exit_non_zero(sweep_notebook, client):
    done = nbtrack_cli("run", "sweep.ipynb", "--grid", "C=1,'boom','die',2", "-j", "2",
                   "-e", "faults", "--no-progress", cwd=sweep_notebook.parent)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(line.startswith("FAILED") and "ValueError: C must be a number" in line
               for line in lines)
    assert any(line.startswith("KILLED") and "kernel died" in line for line in lines)
    by_c = {r.data.params["C"]: r for r in experiment_runs(client, "faults")}
    assert by_c["1"].info.status == "FINISHED" and by_c["2"].info.status == "FINISHED"
    assert by_c["boom"].info.status == "FAILED"
    assert "ValueError: C must be a number" == by_c["boom"].data.tags["nbtrack.error"]
    assert by_c["die"].info.status == "KILLED"
    assert "kernel died" in by_c["die"].data.tags["nbtrack.killed_reason"]
    assert "Traceback" not in done.stderr


def test_a_worker_process_killed_ends_its_execution_and_new_workers_run_the_rest(
        sweep_notebook, client):
    """Fault: the cell SIGKILLs the process executing its notebook (its kernel's parent, one of
    nbtrack run's kept workers), then its kernel. That execution ends KILLED; the ones after it
    run in new workers.
    """
    done = nbtrack_cli("run", "sweep.ipynb", "--grid", "C=1,'worker',2", "-j", "1",
                       "-e", "workers", "--no-progress", cwd=sweep_notebook.parent)
    assert done.returncode == 1, done.stdout + done.stderr
    assert any(line.startswith("KILLED") and "the process executing it died" in line
               for line in done.stdout.splitlines()), done.stdout
    by_c = {r.data.params["C"]: r for r in experiment_runs(client, "workers")}
    assert by_c["1"].info.status == "FINISHED" and by_c["2"].info.status == "FINISHED"
    assert by_c["2"].data.metrics["score"] == 20.0
    assert by_c["worker"].info.status == "KILLED"
    assert "the process executing it died" in by_c["worker"].data.tags["nbtrack.killed_reason"]


def test_unknown_parameter_warns_and_still_runs(sweep_notebook, client):
    done = nbtrack_cli("run", "sweep.ipynb", "-p", "lr=0.5", "-e", "unknown", "--no-progress",
                   cwd=sweep_notebook.parent)
    assert done.returncode == 0, done.stderr
    assert "parameter 'lr' is not set in the notebook's parameters cell" in done.stderr
    assert experiment_runs(client, "unknown")[0].data.params["lr"] == "0.5"


@pytest.mark.parametrize("args, message", [
    (["-p", "C"], "-p takes NAME=VALUE"),
    (["-p", "1x=2"], "-p takes NAME=VALUE"),
    (["--grid", "C=1,,2"], "--grid takes NAME=V1,V2"),
    (["--grid", "C="], "--grid takes NAME=V1,V2"),
    (["-j", "0"], "-j/--jobs takes a positive number"),
])
def test_malformed_options_are_one_line_errors(sweep_notebook, args, message):
    done = nbtrack_cli("run", "sweep.ipynb", *args, cwd=sweep_notebook.parent)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_parameters_without_a_parameters_cell_is_an_error(tmp_path, store):
    write_notebook(tmp_path / "plain.ipynb", ["x = 1"])
    done = nbtrack_cli("run", "plain.ipynb", "-p", "x=2", cwd=tmp_path)
    assert done.returncode == 2
    assert "has no cell tagged 'parameters'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_promote_registers_and_moves_the_alias(sweep_notebook, client, store):
    assert nbtrack_cli("run", "sweep.ipynb", "-e", "promo", "--no-progress",
                   cwd=sweep_notebook.parent).returncode == 0
    fit = write_notebook(sweep_notebook.parent / "fit.ipynb", [
        "%load_ext nbtrack",
        "%%track -e promo -n model\nfrom sklearn.datasets import load_iris\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "X, y = load_iris(return_X_y=True)\nclf = LogisticRegression(max_iter=500).fit(X, y)",
    ])
    assert nbtrack_cli("run", fit.name, "-e", "promo", "--no-progress",
                   cwd=fit.parent).returncode == 0
    runs = {r.data.tags["mlflow.runName"]: r.info.run_id for r in experiment_runs(client, "promo")}
    first = nbtrack_cli("promote", runs["model"], "--model", "iris", cwd=fit.parent)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (f"registered iris v1 from run {runs['model']}; "
                                    "@champion moved to v1 (previously nobody)")
    second = nbtrack_cli("promote", runs["model"], "--model", "iris", cwd=fit.parent)
    assert "@champion moved to v2 (previously v1)" in second.stdout
    assert client.get_model_version_by_alias("iris", "champion").version == 2
    no_model = nbtrack_cli("promote", runs["fit"], "--model", "iris", cwd=fit.parent)
    assert no_model.returncode == 2 and "has no logged model" in no_model.stderr
    missing = nbtrack_cli("promote", "0" * 32, "--model", "iris", cwd=fit.parent)
    assert missing.returncode == 2 and "no run with id" in missing.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ui_serves_mlflows_own_ui_on_the_same_store(store, tmp_path):
    from mlflow import MlflowClient

    # The store holds this test's experiment and run. The ui starts in another folder, whose own
    # default store (./mlflow.db there) would not have them.
    client = MlflowClient(tracking_uri=store)
    experiment_id = client.create_experiment("seen-by-ui")
    run_id = client.create_run(experiment_id, run_name="shown-in-ui").info.run_id
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    server = subprocess.Popen([sys.executable, "-m", "nbtrack", "ui", "--port", str(port)],
                              cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.time() < deadline, "mlflow ui did not start"
                time.sleep(0.5)
        with urllib.request.urlopen(f"{api}/experiments/get-by-name?experiment_name=seen-by-ui",
                                    timeout=10) as response:
            assert json.loads(response.read())["experiment"]["experiment_id"] == experiment_id
        with urllib.request.urlopen(f"{api}/runs/get?run_id={run_id}", timeout=10) as response:
            assert json.loads(response.read())["run"]["info"]["run_name"] == "shown-in-ui"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert not (elsewhere / "mlflow.db").exists()


def test_python_m_nbtrack_is_the_cli(tmp_path):
    done = nbtrack_cli("run", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "--grid" in done.stdout and "Examples:" in done.stdout


def test_nbconvert_execution_is_tagged_batch_and_saves_the_static_board(tmp_path, store, client):
    notebook = write_notebook(tmp_path / "project" / "conv.ipynb", [
        "%load_ext nbtrack",
        "%%track -e conv -n one\nscore = float(3)",
        "%track_board -e conv",
    ])
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         str(notebook), "--output", "conv.out.ipynb"],
        capture_output=True, text=True, timeout=600, cwd=notebook.parent)
    assert done.returncode == 0, done.stderr
    run = experiment_runs(client, "conv")[0]
    assert run.data.tags["nbtrack.batch"] == "nbconvert"
    executed = nbformat.read(notebook.parent / "conv.out.ipynb", 4)
    board_output = executed.cells[2].outputs
    assert [o.output_type for o in board_output] == ["execute_result"]
    data = board_output[0].data
    assert "<table" in data["text/html"] and "one" in data["text/plain"]
    assert "application/vnd.jupyter.widget-view+json" in data
    assert not any(o.output_type == "error" or o.get("name") == "stderr"
                   for cell in executed.cells for o in cell.outputs)


KERNEL_CELLS = [
    "%load_ext nbtrack",
    "%%track -n fit\nimport os\n"
    "print('kernel:', os.environ.get('NBTRACK_TEST_KERNEL', 'python3'))\nscore = C * 2",
]


@pytest.fixture
def second_kernel(tmp_path):
    """A second installed kernel, ``nbtrack-test-kernel``, that sets NBTRACK_TEST_KERNEL=second
    in its kernels: the env to give `nbtrack run` for Jupyter to find it.
    """
    prefix = tmp_path / "kernels"
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix),
                    "--name", "nbtrack-test-kernel", "--display-name", "nbtrack test"],
                   check=True, capture_output=True, timeout=120)
    spec = prefix / "share" / "jupyter" / "kernels" / "nbtrack-test-kernel" / "kernel.json"
    kernel = json.loads(spec.read_text())
    kernel["env"] = {"NBTRACK_TEST_KERNEL": "second"}
    spec.write_text(json.dumps(kernel))
    return {"JUPYTER_PATH": str(prefix / "share" / "jupyter")}


def printed_kernel(folder):
    """The ``kernel:`` lines the tracked cell of the only executed notebook under ``folder``
    printed (one stream output may hold nbtrack's summary line too: the kernel sends what was
    printed close together in one message).
    """
    [executed] = folder.glob("*.ipynb")
    outputs = nbformat.read(executed, 4).cells[-1].outputs
    return [line.strip() for o in outputs if o.get("name") == "stdout"
            for line in o.text.splitlines() if line.startswith("kernel:")]


def test_notebook_without_kernel_metadata_runs_on_the_default_python_kernel(tmp_path, store,
                                                                            client):
    notebook = write_notebook(tmp_path / "project" / "bare.ipynb", KERNEL_CELLS,
                              parameters="C = 1")
    parsed = nbformat.read(notebook, 4)
    parsed.metadata.pop("kernelspec")
    parsed.metadata.pop("language_info", None)
    nbformat.write(parsed, notebook)
    assert "kernelspec" not in nbformat.read(notebook, 4).metadata
    done = nbtrack_cli("run", "bare.ipynb", "-p", "C=3", "-e", "bare", "--no-progress",
                   cwd=notebook.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    [run] = experiment_runs(client, "bare")
    assert run.data.params["C"] == "3" and run.data.metrics["score"] == 6
    assert run.info.status == "FINISHED"
    assert printed_kernel(notebook.parent / "runs") == ["kernel: python3"]


def test_notebook_runs_on_the_kernel_its_kernelspec_names(tmp_path, store, client,
                                                          second_kernel):
    notebook = write_notebook(tmp_path / "project" / "second.ipynb", KERNEL_CELLS,
                              parameters="C = 1")
    parsed = nbformat.read(notebook, 4)
    parsed.metadata["kernelspec"] = {"name": "nbtrack-test-kernel",
                                     "display_name": "nbtrack test", "language": "python"}
    nbformat.write(parsed, notebook)
    done = nbtrack_cli("run", "second.ipynb", "-p", "C=4", "-e", "second", "--no-progress",
                   cwd=notebook.parent, env=second_kernel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert printed_kernel(notebook.parent / "runs") == ["kernel: second"]
    [run] = experiment_runs(client, "second")
    assert run.data.params["C"] == "4" and run.data.metrics["score"] == 8


def test_kernel_option_overrides_the_notebooks_kernelspec(tmp_path, store, client,
                                                         second_kernel):
    notebook = write_notebook(tmp_path / "project" / "nb.ipynb", KERNEL_CELLS, parameters="C = 1")
    assert nbformat.read(notebook, 4).metadata.kernelspec.name == "python3"
    done = nbtrack_cli("run", "nb.ipynb", "-k", "nbtrack-test-kernel", "-e", "override",
                   "--no-progress", cwd=notebook.parent, env=second_kernel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert printed_kernel(notebook.parent / "runs") == ["kernel: second"]
    [run] = experiment_runs(client, "override")
    assert run.data.metrics["score"] == 2


def test_kernel_that_dies_while_starting_is_started_again(tmp_path, store, client):
    """Injected fault: a kernelspec whose first start exits before answering, as a kernel does
    that lost its port to another kernel starting at the same moment; the second start is a real
    ipykernel."""
    folder = tmp_path / "kernels" / "kernels" / "dies-once"
    folder.mkdir(parents=True)
    first = tmp_path / "first-start-happened"
    starter = (f"if [ ! -e {first} ]; then touch {first}; exit 1; fi; "
               f"exec {sys.executable} -m ipykernel_launcher -f \"$0\"")
    (folder / "kernel.json").write_text(json.dumps({
        "argv": ["sh", "-c", starter, "{connection_file}"],
        "display_name": "dies once", "language": "python"}))
    notebook = write_notebook(tmp_path / "project" / "nb.ipynb", KERNEL_CELLS, parameters="C = 1")
    done = nbtrack_cli("run", "nb.ipynb", "-k", "dies-once", "-p", "C=5", "-e", "restart",
                       "--no-progress", cwd=notebook.parent,
                       env={"JUPYTER_PATH": str(tmp_path / "kernels")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert first.exists()
    [run] = experiment_runs(client, "restart")
    assert run.data.metrics["score"] == 10 and run.info.status == "FINISHED"


@pytest.mark.parametrize("kernelspec, args", [
    ("python3", ["-k", "nosuchkernel"]),
    ("nosuchkernel", []),
])
def test_unknown_kernel_is_a_one_line_error_before_anything_runs(tmp_path, store, client,
                                                                 kernelspec, args):
    notebook = write_notebook(tmp_path / "project" / "nb.ipynb", KERNEL_CELLS, parameters="C = 1")
    parsed = nbformat.read(notebook, 4)
    parsed.metadata.kernelspec.name = kernelspec
    nbformat.write(parsed, notebook)
    done = nbtrack_cli("run", "nb.ipynb", *args, "-e", "nokernel", "--no-progress",
                   cwd=notebook.parent)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "'nosuchkernel'" in line and "installed kernels: " in line
    assert "python3" in line.split("installed kernels: ")[1]
    assert done.stdout == ""
    assert not (notebook.parent / "runs").exists()
    assert client.get_experiment_by_name("nokernel") is None


def test_retries_run_a_killed_execution_again_under_a_new_execution_id(tmp_path, store, client):
    """Fault: the kernel SIGKILLs itself on its first attempt (a marker file says which)."""
    marker = tmp_path / "attempted"
    notebook = write_notebook(tmp_path / "project" / "flaky.ipynb", [
        "%load_ext nbtrack",
        "%%track -n fit\nimport os, signal, pathlib\n"
        "if not pathlib.Path(marker).exists():\n    pathlib.Path(marker).touch()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\nscore = 1.0",
    ], parameters=f"marker = {str(marker)!r}")
    done = nbtrack_cli("run", notebook.name, "--retries", "2", "-e", "flaky", "--no-progress",
                       cwd=notebook.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run 2 times: attempt 1 KILLED (the kernel died" in done.stdout
    runs = experiment_runs(client, "flaky")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    assert len({r.data.tags["nbtrack.execution"] for r in runs}) == 2
