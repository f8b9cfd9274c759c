"""%%track on a real in-process IPython shell, recording into a real temporary SQLite store."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
from conftest import own_metrics, write_notebook
from matplotlib.artist import Artist

SETUP = """
import numpy as np
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
X, y = load_iris(return_X_y=True, as_frame=True)
"""


def test_load_ext_does_not_wait_for_mlflow_and_the_next_cell_never_runs_beside_its_import():
    # MLflow's import (seconds) runs on a background thread started as the loading cell ends:
    # loading returns at once, and the next cell starts only once the import is over (never
    # beside it: concurrent first imports can hand a cell a half-initialized numpy).
    code = (
        "import sys, threading, time\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "started = time.perf_counter()\n"
        "ip.run_cell('%load_ext nbtrack')\n"
        "loaded_in = time.perf_counter() - started\n"
        "print(sorted(ip.magics_manager.magics['cell']).count('track'),"
        " 'track_config' in ip.magics_manager.magics['line'],"
        " any(t.name == 'nbtrack-import-mlflow' for t in threading.enumerate()))\n"
        "ip.run_cell('import sys\\nm = sys.modules.get(\"mlflow\")\\n'\n"
        "            'ready = m is not None and not getattr(m.__spec__, \"_initializing\", False)"
        " and hasattr(m, \"MlflowClient\")')\n"
        "print(ip.user_ns['ready'], loaded_in < 0.3 or loaded_in)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "True", "True", "True", "True"], out.stdout + out.stderr


def test_extension_loads_from_ipython_config(tmp_path):
    profile = tmp_path / "profile_default"
    profile.mkdir()
    (profile / "ipython_config.py").write_text('c.InteractiveShellApp.extensions = ["nbtrack"]\n')
    out = subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", f"--ipython-dir={tmp_path}", "-c",
         "print('track' in get_ipython().magics_manager.magics['cell'])"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip().endswith("True")


def test_help_lists_every_option(shell, capsys):
    shell.ok("%%track?")
    shell.ip.run_line_magic("pinfo", "%%track")
    text = capsys.readouterr().out
    for option in ("--experiment", "--name", "--tag", "--params", "--metrics", "--no-figures",
                   "--no-model", "--register"):
        assert option in text


def test_literal_bindings_become_params_flattened(shell):
    shell.ok('%%track -e exp\nC = 0.5\nname = "lbfgs"\nuse_bias = True\nnothing = None\n'
             'layers = [64, 32]\ncfg = {"lr": 0.1, "opt": {"beta": 0.9}}\n')
    params = shell.last().data.params
    assert params["C"] == "0.5"
    assert params["name"] == "lbfgs"
    assert params["use_bias"] == "True"
    assert params["nothing"] == "None"
    assert params["layers"] == "[64, 32]"
    assert params["cfg.lr"] == "0.1"
    assert params["cfg.opt.beta"] == "0.9"


def test_names_read_from_earlier_cells_become_params(shell):
    shell.ok("seed = 7\nunused = 3\nlabel = 'x'")
    shell.ok("import random")
    shell.ok("%%track -e exp\nrandom.seed(seed)\nvalue = random.random()")
    params = shell.last().data.params
    assert params["seed"] == "7"
    assert "unused" not in params and "random" not in params


def test_fitted_estimator_hyperparameters_prefixed_with_variable_name(shell):
    shell.ok(SETUP)
    shell.ok("%%track -e exp\nclf = make_pipeline(StandardScaler(), LogisticRegression(C=0.3))\n"
             "clf.fit(X, y)")
    params = shell.last().data.params
    assert params["clf.logisticregression__C"] == "0.3"
    assert params["clf.standardscaler__with_mean"] == "True"


def test_metrics_are_computed_numbers_not_literals_loops_private_or_bools(shell):
    shell.ok(SETUP)
    shell.ok(
        "%%track -e exp\n"
        "clf = LogisticRegression(max_iter=500).fit(X, y)\n"
        "acc = clf.score(X, y)\n"
        "n_rows = np.int64(len(X))\n"
        "f32 = np.float32(0.25) * 2\n"
        "threshold = 0.5\n"
        "_hidden = acc * 2\n"
        "is_good = acc > 0.5\n"
        "total = 0\n"
        "for i in range(3):\n"
        "    total += i\n"
    )
    metrics = shell.last().data.metrics
    assert metrics["acc"] > 0.9
    assert metrics["n_rows"] == 150
    assert metrics["f32"] == 0.5
    assert metrics["total"] == 3
    for name in ("threshold", "_hidden", "is_good", "i"):
        assert name not in metrics
    assert shell.last().data.params["threshold"] == "0.5"


def test_log_metric_series_with_steps(shell):
    shell.ok("import nbtrack")
    shell.ok("%%track -e exp\nfor epoch in range(4):\n"
             "    nbtrack.log_metric('loss', 1 / (epoch + 1), step=epoch)\n"
             "nbtrack.log_metric('lr', 0.1)\nnbtrack.log_metric('lr', 0.05)\n")
    run_id = shell.last().info.run_id
    loss = shell.client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in sorted(loss, key=lambda m: m.step)] == [
        (0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.25)]
    lr = shell.client.get_metric_history(run_id, "lr")
    assert sorted((m.step, m.value) for m in lr) == [(0, 0.1), (1, 0.05)]


def test_figures_shown_in_a_loop_and_left_open_are_logged(shell):
    shell.ok("import matplotlib.pyplot as plt\nfrom IPython.display import display")
    shell.ok(
        "%%track -e exp\n"
        "for k in range(3):\n"
        "    fig, ax = plt.subplots()\n"
        "    ax.plot([0, k])\n"
        "    ax.set_title(f'curve {k}')\n"
        "    display(fig)\n"
        "    plt.close(fig)\n"
        "other, ax2 = plt.subplots()\n"
        "ax2.bar([1, 2], [3, 4])\n"
    )
    run_id = shell.last().info.run_id
    paths = shell.artifact_paths(run_id, "figures")
    assert paths == ["figures/01-curve-0.png", "figures/02-curve-1.png",
                     "figures/03-curve-2.png", "figures/04-figure.png"]
    local = shell.client.download_artifacts(run_id, "figures/01-curve-0.png")
    with open(local, "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"


def test_figures_open_before_the_cell_are_not_logged_and_no_figures_option(shell):
    shell.ok("import matplotlib.pyplot as plt\nold = plt.figure()")
    shell.ok("%%track -e exp\nx = 1")
    assert shell.artifact_paths(shell.last().info.run_id, "figures") == []
    shell.ok("%%track -e exp --no-figures\nfig = plt.figure()\nfig.gca().plot([1, 2])")
    assert shell.artifact_paths(shell.last().info.run_id, "figures") == []


def test_display_output_is_unchanged_by_tracking(shell):
    # The same figure displayed by the same cell, untracked then tracked: the display messages
    # (every format, the PNG's bytes, the metadata) are the same, and the run logs that PNG.
    from IPython.core.pylabtools import select_figure_formats
    from IPython.utils.capture import capture_output

    select_figure_formats(shell.ip, {"png"})  # what Jupyter's inline backend sets up
    shell.ok("import matplotlib.pyplot as plt\nfrom IPython.display import display")
    cell = ("fig, ax = plt.subplots()\nax.plot([0, 1, 4])\nax.set_title('shown')\n"
            "display(fig)\nplt.close(fig)")
    with capture_output() as untracked:
        shell.ok(cell)
    with capture_output() as tracked:
        shell.ok("%%track -e exp\n" + cell)
    [plain], [shown] = untracked.outputs, tracked.outputs
    assert "image/png" in plain.data
    assert shown.data == plain.data
    assert shown.metadata == plain.metadata
    run_id = shell.last().info.run_id
    assert shell.artifact_paths(run_id, "figures") == ["figures/01-shown.png"]
    local = shell.client.download_artifacts(run_id, "figures/01-shown.png")
    png = shown.data["image/png"]
    with open(local, "rb") as logged:
        assert logged.read() == (png if isinstance(png, bytes) else base64.b64decode(png))


def test_fitted_model_logged_with_signature_and_example_loadable_by_pyfunc(shell):
    import mlflow

    shell.ok(SETUP)
    shell.ok("%%track -e exp\nclf = LogisticRegression(max_iter=500)\nclf.fit(X, y)\n"
             "unfitted = LogisticRegression()")
    run = shell.last()
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         output_format="list")
    assert [m.name for m in models] == ["clf"]
    assert models[0].source_run_id == run.info.run_id
    model = mlflow.pyfunc.load_model(f"models:/{models[0].model_id}")
    inputs = model.metadata.get_input_schema().input_names()
    assert inputs == ["sepal length (cm)", "sepal width (cm)", "petal length (cm)",
                      "petal width (cm)"]
    assert list(model.predict(shell.ip.user_ns["X"].head(3))) == [0, 0, 0]
    assert model.metadata.saved_input_example_info is not None


def test_no_model_option_and_native_boosters_logged_with_their_flavor(shell, capsys):
    import mlflow

    shell.ok(SETUP)
    shell.ok("%%track -e exp --no-model\nclf = LogisticRegression(max_iter=500).fit(X, y)")
    run = shell.last()
    assert mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                       output_format="list") == []
    assert run.data.params["clf.max_iter"] == "500"
    capsys.readouterr()

    # A model of another library (a LightGBM Booster, trained with its native API): logged with
    # MLflow's lightgbm flavor, named in the summary line with it, its rounds a param.
    shell.ok("%%track -e exp\nimport lightgbm as lgb\n"
             "booster = lgb.train({'objective': 'multiclass', 'num_class': 3, 'verbose': -1},\n"
             "                    lgb.Dataset(X, y), num_boost_round=2)\n"
             "acc = float((booster.predict(X).argmax(axis=1) == y).mean())")
    out = capsys.readouterr()
    assert "model booster (lightgbm)" in out.out, out
    assert "not logged" not in out.err
    booster_run = shell.last()
    assert booster_run.info.run_id != run.info.run_id and "acc" in booster_run.data.metrics
    assert booster_run.data.params["booster.num_boost_round"] == "2"
    [logged] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                           output_format="list")
    model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    assert "lightgbm" in model.metadata.flavors
    assert model.predict(shell.ip.user_ns["X"][:3]).shape[0] == 3


def test_datasets_read_and_bound_logged_with_digest_and_shape(shell):
    shell.ok(SETUP)
    shell.ok("%%track -e exp\nsmall = X.head(10)\narr = np.arange(12).reshape(3, 4)\n"
             "total = float(small.sum().sum())")
    inputs = shell.last().inputs.dataset_inputs
    by_name = {d.dataset.name: d for d in inputs}
    assert set(by_name) == {"X", "small", "arr"}
    assert json.loads(by_name["small"].dataset.profile)["num_rows"] == 10
    assert json.loads(by_name["arr"].dataset.profile)["features_shape"] == [3, 4]
    assert by_name["X"].dataset.digest != by_name["small"].dataset.digest
    contexts = {d.dataset.name: d.tags[0].value for d in inputs}
    assert contexts == {"X": "read", "small": "bound", "arr": "bound"}


def test_lineage_source_history_tags_and_versions(shell):
    shell.ok("seed = 1")
    shell.ok("%%track -e exp -n lineage -t team=ml -t stage=dev\nx = seed + 1",
             cell_id="cell-abc")
    run = shell.last()
    tags = run.data.tags
    assert tags["mlflow.runName"] == "lineage"
    assert tags["team"] == "ml" and tags["stage"] == "dev"
    assert tags["nbtrack.cell"] == "cell-abc" == tags["nbtrack.cell_id"]
    assert tags["mlflow.source.type"] == "NOTEBOOK"
    assert tags["nbtrack.version.python"].startswith("3.")
    assert "nbtrack.version.nbtrack" in tags
    source = shell.artifact_text(run.info.run_id, "cell/source.py")
    assert source.startswith("%%track -e exp -n lineage") and "x = seed + 1" in source
    history = shell.artifact_text(run.info.run_id, "lineage/history.py")
    assert history.index("seed = 1") < history.index("x = seed + 1")


def test_notebook_path_git_state_and_snapshot(shell, store, tmp_path, monkeypatch):
    repo = tmp_path / "project"
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    write_notebook(repo / "analysis.ipynb", ['token = "s3cr3t-value"\nx = 1'])
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "add", "."], cwd=repo,
                   check=True)
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x"],
                   cwd=repo, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                            text=True).stdout.strip()
    monkeypatch.setenv("JPY_SESSION_NAME", "analysis.ipynb")
    shell.ok('token = "s3cr3t-value"')
    shell.ok("%%track\nx = 1")
    run = shell.runs("project")[-1]
    tags = run.data.tags
    assert tags["nbtrack.notebook"] == str(repo / "analysis.ipynb")
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["nbtrack.git.dirty"] == "false"
    snapshot = shell.artifact_text(run.info.run_id, "lineage/analysis.ipynb")
    assert "s3cr3t-value" not in snapshot and "REDACTED" in snapshot
    assert run.data.tags["mlflow.runName"].startswith("analysis #")


def test_rerun_of_the_same_cell_supersedes_the_previous_run(shell):
    first = shell.ok("%%track -e exp\nx = 1", cell_id="c1")
    first_id = shell.last().info.run_id
    shell.ok("%%track -e exp\nx = 2", cell_id="c1")
    second = shell.last()
    assert second.info.run_id != first_id
    assert second.data.tags["nbtrack.supersedes"] == first_id
    assert first.success


def test_cell_output_result_and_exception_unchanged(shell, capsys):
    shell.ok("def work():\n    print('hello')\n    return 42")
    plain = shell.run("work()")
    plain_out = capsys.readouterr().out
    tracked = shell.run("%%track -e exp\nwork()")
    tracked_out = capsys.readouterr().out
    assert tracked.result == plain.result == 42
    assert tracked_out.startswith(plain_out.replace("Out[2]", "Out[3]"))
    assert tracked_out.count("nbtrack:") == 1

    error = shell.run("%%track -e exp\nraise ValueError('bad value 7')")
    assert type(error.error_in_exec) is ValueError
    assert str(error.error_in_exec) == "bad value 7"


def test_failed_cell_marks_run_failed_with_traceback(shell):
    shell.run("%%track -e exp\nx = 1\n1 / 0")
    run = shell.last()
    assert run.info.status == "FAILED"
    assert run.data.tags["nbtrack.error"] == "ZeroDivisionError: division by zero"
    trace = shell.artifact_text(run.info.run_id, "error/traceback.txt")
    assert "ZeroDivisionError" in trace
    assert run.data.params["x"] == "1"


def test_keyboard_interrupt_marks_run_killed(shell):
    result = shell.run("%%track -e exp\nraise KeyboardInterrupt")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert shell.last().info.status == "KILLED"


def test_users_own_mlflow_calls_land_in_the_tracked_run(shell):
    shell.ok("import mlflow")
    shell.ok("%%track -e exp\nmlflow.log_param('manual', 'yes')\nmlflow.set_tag('who', 'me')\n"
             "mlflow.log_metric('m', 3.0)\nx = 5")
    runs = shell.runs("exp")
    assert len(runs) == 1
    data = runs[0].data
    assert data.params["manual"] == "yes" and data.params["x"] == "5"
    assert data.tags["who"] == "me" and data.metrics["m"] == 3.0
    assert runs[0].info.status == "FINISHED"
    assert mlflow_active_run() is None


def test_autolog_left_on_logs_into_the_tracked_run_and_its_model_is_not_logged_twice(shell):
    import mlflow

    shell.ok(SETUP)
    shell.ok("import mlflow\nmlflow.sklearn.autolog(silent=True)")
    try:
        shell.ok("%%track -e exp\nclf = LogisticRegression(max_iter=300).fit(X, y)")
    finally:
        mlflow.sklearn.autolog(disable=True)
    [run] = shell.runs("exp")  # waits for the writer
    every_run = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.run_id for r in every_run] == [run.info.run_id]  # autolog made no run
    assert "training_accuracy_score" in run.data.metrics  # autolog's
    assert run.data.params["clf.max_iter"] == "300"  # nbtrack's
    assert run.info.status == "FINISHED"
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         output_format="list")
    assert len(models) == 1  # autolog's; nbtrack does not log the same model again
    assert mlflow_active_run() is None


def mlflow_active_run():
    import mlflow

    return mlflow.active_run()


def test_run_left_open_by_earlier_cell_never_gives_run_already_active(shell):
    shell.ok("import mlflow\nmlflow.set_experiment('exp')")
    shell.run("mlflow.start_run()\n1 / 0")  # the user's own run, left open by the failure
    for _ in range(2):
        shell.ok("%%track -e exp\nmlflow.log_param('p', 1)\nv = 2")
    tracked = [r for r in shell.runs("exp") if "nbtrack.cell" in r.data.tags]
    assert len(tracked) == 2
    assert all(r.info.status == "FINISHED" for r in tracked)


def test_experiment_resolution_order(shell, monkeypatch):
    shell.ok("%%track\nx = 1")
    assert shell.client.get_run(shell.last().info.run_id).info.experiment_id == \
        shell.client.get_experiment_by_name("project").experiment_id
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    shell.ok("%%track\nx = 2")
    assert shell.runs("from-env")
    shell.ok("%track_config -e configured")
    shell.ok("%%track\nx = 3")
    assert shell.runs("configured")
    shell.ok("%%track -e explicit\nx = 4")
    assert shell.runs("explicit")


def test_params_and_metrics_options_replace_detection(shell):
    shell.ok("a = 1\nb = 'two'\nc = 3.5")
    shell.ok("%%track -e exp --params a,b --metrics score\nscore = a * 10\nother = c * 2\n"
             "lit = 9")
    data = shell.last().data
    assert data.params == {"a": "1", "b": "two"}
    # --metrics names the cell's metrics; the machine's (system/...) are sampled as ever
    assert own_metrics(data.metrics) == {"score": 10.0}


def test_bad_option_is_a_usage_error_and_the_cell_does_not_run(shell, capsys):
    result = shell.run("%%track --bogus\nran = True")
    assert result.error_in_exec is not None or result.error_before_exec is not None
    assert "ran" not in shell.ip.user_ns
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    result = shell.run("%%track -t novalue\nran = True")
    assert "ran" not in shell.ip.user_ns


def test_register_option_creates_a_version_loadable_by_name(shell):
    import mlflow

    shell.ok(SETUP)
    shell.ok("%%track -e exp --register iris-clf\nclf = LogisticRegression(max_iter=500)"
             ".fit(X, y)")
    versions = shell.client.search_model_versions("name = 'iris-clf'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].run_id == shell.last().info.run_id
    model = mlflow.pyfunc.load_model("models:/iris-clf/1")
    assert len(model.predict(shell.ip.user_ns["X"].head(2))) == 2


def test_register_without_a_model_warns_and_keeps_the_run(shell, capsys):
    shell.ok("%%track -e exp --register nothing\nx = 1")
    err = capsys.readouterr().err
    assert "nothing was registered" in err
    assert shell.last().info.status == "FINISHED"


def test_unreachable_store_keeps_the_cell_and_the_record(shell, monkeypatch, capsys):
    import nbtrack

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    result = shell.run("%%track -e exp\nvalue = 41 + 1\nvalue")
    assert result.success and result.result == 42
    kept = nbtrack.unrecorded()  # waits a little for the writer's first attempt
    assert len(kept) == 1 and kept[0].metrics == {"value": 42.0}
    err = capsys.readouterr().err
    assert "not recorded yet" in err and "queued" in err
    shell.ok("%%track -e exp\nagain = 1")
    assert "queued: the store is not answering" in capsys.readouterr().out
    assert [r.run_name for r in nbtrack.unrecorded()] == ["ipython #1", "ipython #2"]


def test_values_mlflow_would_reject_are_sanitized_with_a_warning(shell, capsys):
    shell.ok("import nbtrack\nimport math")
    shell.ok("%%track -e exp\nlong_text = '" + "x" * 7000 + "'\n"
             "ratio = math.nan\nbig = math.inf\n"
             "nbtrack.log_param('weird key!', 1)\n"
             "nbtrack.log_param('p', 1)\nnbtrack.log_param('p', 2)\n")
    err = capsys.readouterr().err
    data = shell.last().data
    assert len(data.params["long_text"]) == 6000 and "truncated" in err
    assert "ratio" not in data.metrics and "'ratio' not logged" in err
    assert "big" not in data.metrics
    assert data.params["weird key_"] == "1"
    assert data.params["p"] == "1" and "already logged" in err


def test_secrets_are_never_logged(shell, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "env-pass-9876")
    shell.ok('db_password = "hunter2-pw"\nconfig = {"api_key": "key-abc-123", "lr": 0.1}')
    shell.ok('%%track -e exp\napiKey = "key-zzz-999"\n'
             'dsn = "postgresql://bob:pgpass-555@db/x"\n'
             'login = db_password\n'
             'rate = config["lr"]\n'
             'print("env-pass-9876" * 0)')
    run = shell.last()
    blob = json.dumps([run.data.params, run.data.tags, run.data.metrics])
    for path in shell.artifact_paths(run.info.run_id):
        blob += shell.artifact_text(run.info.run_id, path)
    for secret in ("hunter2-pw", "key-abc-123", "key-zzz-999", "pgpass-555", "env-pass-9876"):
        assert secret not in blob
    assert "apiKey" not in run.data.params and "config.api_key" not in run.data.params
    assert run.data.params["config.lr"] == "0.1"


def test_reload_ext_leaves_one_set_of_hooks(shell):
    shell.ok("%reload_ext nbtrack")
    shell.ok("%reload_ext nbtrack")
    before = len(shell.runs("exp")) if shell.client.get_experiment_by_name("exp") else 0
    shell.ok("%%track -e exp\nx = 1")
    assert len(shell.runs("exp")) == before + 1


def test_runs_api_returns_dataframe_and_last_run(shell):
    import nbtrack

    shell.ok("%%track -e exp -n a\nscore = float(1)")
    shell.ok("%%track -e exp -n b\nscore = float(2)")
    frame = nbtrack.runs("exp", order_by=["metrics.score DESC"])
    assert list(frame["tags.mlflow.runName"]) == ["b", "a"]
    assert nbtrack.last_run() == frame["run_id"][0]
    filtered = nbtrack.runs("exp", filter="metrics.score < 1.5")
    assert list(filtered["tags.mlflow.runName"]) == ["a"]


def test_log_figure_api(shell):
    shell.ok("import nbtrack\nimport matplotlib.pyplot as plt")
    shell.ok("%%track -e exp\nfig = plt.figure()\nfig.gca().plot([1, 3])\n"
             "nbtrack.log_figure(fig, 'My Plot')\nplt.close(fig)")
    assert shell.artifact_paths(shell.last().info.run_id, "figures") == ["figures/01-my-plot.png"]


@pytest.mark.parametrize("source", ["x = (", "%%track -e exp\nx = (\n"])
def test_syntax_errors_are_the_users_own(shell, source):
    result = shell.run(source)
    assert isinstance(result.error_in_exec or result.error_before_exec, SyntaxError)


def test_quoted_option_values_keep_their_spaces(shell):
    shell.ok("%%track -e exp -n 'my run' -t \"note=two words\"\nx = 1")
    tags = shell.last().data.tags
    assert tags["mlflow.runName"] == "my run" and tags["note"] == "two words"


def test_syntax_error_ends_the_run_failed_and_later_cells_are_tracked(shell):
    shell.run("%%track -e exp -n broken\nx = (")
    broken = shell.last()
    assert broken.data.tags["mlflow.runName"] == "broken"
    assert broken.info.status == "FAILED"
    assert broken.data.tags["nbtrack.error"].startswith("SyntaxError")
    shell.ok("%%track -e exp -n fine\ny = 1")
    assert shell.last().data.tags["mlflow.runName"] == "fine"
    assert shell.last().info.status == "FINISHED"


def test_cell_magics_that_run_cells_inside_the_tracked_cell(shell):
    shell.ok("%%track -e exp -n captured\n%%capture out\nprint('hidden')\nvalue = 3 * 2")
    run = shell.last()
    assert run.data.tags["mlflow.runName"] == "captured"
    assert shell.ip.user_ns["out"].stdout == "hidden\n"
    shell.ok("%%track -e exp -n next\nz = 1")
    assert shell.last().data.tags["mlflow.runName"] == "next"


def test_top_level_await_cells_are_analyzed(shell):
    shell.ok("import asyncio")
    shell.ok("%%track -e exp\nrate = 0.5\nawait asyncio.sleep(0)\nscore = rate * 4")
    data = shell.last().data
    assert data.params["rate"] == "0.5" and data.metrics["score"] == 2.0


def test_users_set_experiment_does_not_stop_models_or_their_own_calls(shell, capsys):
    shell.ok(SETUP)
    shell.ok("import mlflow\nmlflow.set_experiment('my-own-experiment')")
    shell.ok("%%track -e exp -n demo\nclf = LogisticRegression(max_iter=500).fit(X, y)\n"
             "mlflow.log_param('mine', 1)")
    out = capsys.readouterr()
    assert "nbtrack:" not in out.err
    summary = [line for line in out.out.splitlines() if line.startswith("nbtrack: run")]
    assert "model clf" in summary[0] and "NOT logged" not in summary[0]
    run = shell.last()
    assert run.data.params["mine"] == "1"
    import mlflow

    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         output_format="list")
    assert [(m.name, str(m.status)) for m in models] == [("clf", "READY")]
    requirements = mlflow.pyfunc.get_model_dependencies(models[0].model_uri)
    assert "skops" in open(requirements).read()
    # The user's own choice of experiment is as they left it.
    with mlflow.start_run() as own:
        pass
    assert mlflow.get_experiment(own.info.experiment_id).name == "my-own-experiment"
    assert run.data.tags["nbtrack.version.mlflow"]


class ExplodingArtist(Artist):
    """A fault injected on purpose: an artist that pickles like any other and raises when drawn."""

    def draw(self, renderer):
        raise RuntimeError("cannot draw this on purpose")


def test_undisplayed_figure_is_drawn_later_from_a_copy_taken_when_the_cell_ended():
    """The figure's PNG is drawn off the cell's time, from a copy: changing the figure after
    the cell does not change what was logged, and the copy never becomes a pyplot figure.
    """
    import io

    import matplotlib.pyplot as plt

    from nbtrack.capture.figures import FigureCollector, render_snapshot
    from nbtrack.record import FigureSnapshot

    collector = FigureCollector()
    collector.start()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [2, 0, 1])
    ax.set_title("as the cell left it")
    expected = io.BytesIO()
    fig.savefig(expected, format="png", bbox_inches="tight")
    collector.finish()
    ax.plot([0, 2], [0, 2])  # a later cell changes the figure
    ax.set_title("changed afterwards")
    figures_before = plt.get_fignums()
    [snapshot] = collector.artifacts()
    assert isinstance(snapshot, FigureSnapshot)
    assert snapshot.path == "figures/01-as-the-cell-left-it.png"
    assert render_snapshot(snapshot) == expected.getvalue()
    assert plt.get_fignums() == figures_before
    plt.close(fig)


class DrawingTimes:
    """A spy, not a fake: Figure.savefig does its real work, and the times it ran on a thread
    other than the main one (the writer drawing figure copies) are noted.
    """

    def __init__(self, monkeypatch):
        import threading
        import time

        from matplotlib.figure import Figure

        self.spans: list[tuple[float, float]] = []
        real = Figure.savefig

        def timed(figure, *args, **kwargs):
            start = time.monotonic()
            try:
                return real(figure, *args, **kwargs)
            finally:
                if threading.current_thread() is not threading.main_thread():
                    self.spans.append((start, time.monotonic()))

        monkeypatch.setattr(Figure, "savefig", timed)

    def during(self, start: float, end: float) -> list[tuple[float, float]]:
        return [span for span in self.spans if span[0] < end and span[1] > start]


def test_figure_copies_are_drawn_between_cells_never_while_a_cell_runs(shell, monkeypatch):
    """matplotlib is not thread-safe (one mathtext parser for all figures): the writer draws a
    copy only once the user's code is done, even when it is ready to draw while a cell runs.
    """
    import nbtrack

    drawing = DrawingTimes(monkeypatch)
    shell.ok("import time\nimport matplotlib.pyplot as plt")
    shell.ok("%%track -e exp -n warm-up\nwarm = 1")
    nbtrack.flush()  # the store is open: the next run reaches its figure within the next cell
    shell.ok("%%track -e exp -n math\nfig, ax = plt.subplots()\nax.plot([3, 1, 2])\n"
             "ax.set_title(r'$\\alpha_t$ against $\\sqrt{t}$')")
    shell.ok("fig2, ax2 = plt.subplots()\nax2.set_title(r'$\\beta^2$')\nstarted = time.monotonic()\n"
             "while time.monotonic() - started < 2:\n    fig2.canvas.draw()\n"
             "ended = time.monotonic()\nplt.close(fig2)")
    assert nbtrack.flush(timeout=60)
    run = shell.last()
    assert shell.artifact_paths(run.info.run_id, "figures") == [
        "figures/01-alpha-t-against-sqrt-t.png"]
    assert len(drawing.spans) == 1
    ns = shell.ip.user_ns
    assert drawing.during(ns["started"], ns["ended"]) == []


def test_a_cell_waiting_in_flush_lets_the_writer_draw_its_figure_copies(shell, monkeypatch):
    drawing = DrawingTimes(monkeypatch)
    shell.ok("import time\nimport nbtrack\nimport matplotlib.pyplot as plt")
    shell.ok("%%track -e exp -n plotted\nfig, ax = plt.subplots()\nax.plot([1, 2])\n"
             "ax.set_title('in flush')")
    shell.ok("started = time.monotonic()\nflushed = nbtrack.flush(timeout=60)\n"
             "ended = time.monotonic()")
    ns = shell.ip.user_ns
    assert ns["flushed"] is True
    assert len(drawing.during(ns["started"], ns["ended"])) == 1
    assert shell.artifact_paths(shell.last().info.run_id, "figures") == [
        "figures/01-in-flush.png"]


def test_under_a_backend_that_redraws_by_itself_undisplayed_figures_are_drawn_at_once(
        tmp_path, monkeypatch):
    """A GUI or widget backend redraws figures on the main thread between cells, when the writer
    could be drawing: there the collector draws the cell's figures itself, as the cell ends.
    """
    import matplotlib
    import matplotlib.pyplot as plt

    from nbtrack.capture.figures import FigureCollector
    from nbtrack.record import Artifact

    (tmp_path / "redrawing_backend.py").write_text(
        "from matplotlib.backends.backend_agg import FigureCanvasAgg as FigureCanvas\n"
        "from matplotlib.backend_bases import FigureManagerBase as FigureManager\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    previous = matplotlib.get_backend()
    plt.switch_backend("module://redrawing_backend")
    try:
        collector = FigureCollector()
        collector.start()
        fig, ax = plt.subplots()
        ax.set_title("window")
        collector.finish()
        [artifact] = collector.artifacts()
        assert isinstance(artifact, Artifact)
        assert artifact.path == "figures/01-window.png"
        assert artifact.content.startswith(b"\x89PNG")
        plt.close(fig)
    finally:
        plt.switch_backend(previous)


def test_undisplayed_figures_reach_the_store_even_when_they_cannot_be_copied(shell):
    shell.ok("import matplotlib.pyplot as plt\nfrom matplotlib.ticker import FuncFormatter")
    shell.ok("%%track -e exp -n unpicklable\nfig, ax = plt.subplots()\nax.plot([1, 2])\n"
             "ax.xaxis.set_major_formatter(FuncFormatter(lambda x, pos: f'<{x}>'))\n"
             "ax.set_title('lambda ticks')")
    run_id = shell.last().info.run_id
    assert shell.artifact_paths(run_id, "figures") == ["figures/01-lambda-ticks.png"]
    local = shell.client.download_artifacts(run_id, "figures/01-lambda-ticks.png")
    with open(local, "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_figure_that_cannot_be_drawn_is_named_and_the_rest_of_the_run_kept(shell, capsys):
    import nbtrack

    shell.ip.user_ns["Exploding"] = ExplodingArtist
    shell.ok("import matplotlib.pyplot as plt")
    result = shell.ok("%%track -e exp -n broken-figure\nfig = plt.figure()\n"
                      "fig.add_artist(Exploding())\nvalue = 41 + 1\nvalue")
    assert result.result == 42
    nbtrack.flush()
    run = shell.last()
    assert run.info.status == "FINISHED"
    assert run.data.metrics["value"] == 42
    assert shell.artifact_paths(run.info.run_id, "figures") == []
    assert "cell/source.py" in shell.artifact_paths(run.info.run_id)
    err = capsys.readouterr().err
    assert "figure figures/01-figure.png of run 'broken-figure' not recorded" in err
    assert "cannot draw this on purpose" in err


def test_a_figure_copy_drawn_on_the_cells_own_thread_does_not_wait_for_itself(shell):
    """`nbtrack sync` run in-process from a cell draws the copies it replays on the cell's own
    thread, which holds the drawing gate already."""
    import faulthandler

    import matplotlib.pyplot as plt

    from nbtrack.capture.figures import FigureCollector

    collector = FigureCollector()
    collector.start()
    fig, ax = plt.subplots()
    ax.set_title("replayed")
    collector.finish()
    plt.close(fig)
    [snapshot] = collector.artifacts()
    shell.ip.user_ns["snapshot"] = snapshot
    faulthandler.dump_traceback_later(60, exit=True)  # a hang here must end the run, not stall CI
    try:
        shell.ok("from nbtrack.capture.figures import render_snapshot\n"
                 "png = render_snapshot(snapshot)")
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert shell.ip.user_ns["png"].startswith(b"\x89PNG")


def test_upstream_seed_a_loop_series_and_a_list_the_cell_fills(shell):
    shell.ok("seed = 7")
    shell.ok(SETUP + "from sklearn.model_selection import train_test_split\n"
             "X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=seed)")
    shell.ok("%%track -e up\nimport nbtrack\nlosses = []\nfor epoch in range(3):\n"
             "    loss = 1.0 / (epoch + 1)\n    losses.append(loss)\n"
             "    nbtrack.log_metric('loss', loss, step=epoch)\n"
             "clf = LogisticRegression(max_iter=300).fit(X_train, y_train)")
    [run] = shell.runs("up")
    # seed made X_train, which the cell reads: an upstream param, tagged as such.
    assert run.data.params["seed"] == "7"
    assert run.data.tags["nbtrack.upstream_params"] == "seed"
    # losses = [] was filled by the cell: computed, not set; not a param.
    assert "losses" not in run.data.params
    # loss is the logged series only: no extra point from the variable of the same name.
    points = shell.client.get_metric_history(run.info.run_id, "loss")
    assert [(p.step, p.value) for p in points] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    # loss is bound in the loop before it is read: not hidden state.
    assert "loss" not in run.data.tags.get("nbtrack.hidden_state", "")


def test_system_metrics_sampled_while_the_cell_runs_and_off_by_config(shell, capsys):
    import threading

    shell.ok("%%track -e sys\nimport time\ntime.sleep(4.5)\nwaited = 4.5 * 1")
    [run] = shell.runs("sys")
    keys = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/system_memory_usage_percentage", "system/process_memory_rss_megabytes",
            "system/process_cpu_utilization_percentage"} <= keys
    points = shell.client.get_metric_history(run.info.run_id, "system/process_memory_rss_megabytes")
    assert len(points) >= 2 and [p.step for p in points] == list(range(len(points)))
    assert all(p.value > 10 for p in points)  # megabytes of a Python process with IPython
    # The summary counts the cell's metrics, not the machine's.
    assert "1 metric," in capsys.readouterr().out
    assert not [t for t in threading.enumerate() if t.name == "nbtrack-system-metrics"]

    shell.ok("%%track -e sys -n short\nquick = 1 + 1")  # shorter than the interval: one sample
    short = [r for r in shell.runs("sys") if r.info.run_name == "short"][0]
    assert len(shell.client.get_metric_history(short.info.run_id,
                                               "system/cpu_utilization_percentage")) == 1

    shell.ok("%config Nbtrack.system_metrics = False")
    shell.ok("%%track -e sys -n off\nquiet = 2 + 2")
    off = [r for r in shell.runs("sys") if r.info.run_name == "off"][0]
    assert not [k for k in off.data.metrics if k.startswith("system/")]
