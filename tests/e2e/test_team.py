"""Team mode: nbtrack unchanged on three stores (local SQLite, ``mlflow server`` on SQLite, the
README's team server on PostgreSQL with proxied artifacts and basic-auth), two users sharing one
experiment, permissions on the champion alias, and secrets that never reach the store.

The stores come from ``any_store`` (tests/servers.py); server stores live for the whole session,
so every test names its experiments and models with ``any_store.name(...)``.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import Shell, nbtrack_cli, run_notebook, write_notebook
from servers import readme_blocks

SETUP = """
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True, as_frame=True)
"""
FIT = ("%%track -e {experiment} -n {name}\nC = {c}\n"
       "clf = LogisticRegression(C=C, max_iter=500).fit(X, y)\nval_acc = clf.score(X, y)")
TEAM = [pytest.param("http-postgres", id="http-postgres")]


# The last cell of a notebook a test executes: the kernel's queued runs reach the store before
# nbclient shuts the kernel down (when nbtrack writes in the background).
FLUSH_CELL = "import nbtrack\nif hasattr(nbtrack, 'flush'):\n    nbtrack.flush()"


def flush():
    """Let runs queued by a background writer reach the store (no-op when writes are direct)."""
    import nbtrack

    if hasattr(nbtrack, "flush"):
        nbtrack.flush()


def client():
    from mlflow import MlflowClient

    return MlflowClient()


@pytest.fixture
def store_shell(any_store):
    """An in-process IPython shell with nbtrack loaded, on the matrix's store."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    InteractiveShell.clear_instance()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=config)
    ip.run_cell("%load_ext nbtrack")
    yield Shell(ip, client())
    ip.run_cell("%unload_ext nbtrack")
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    InteractiveShell.clear_instance()
    sys.modules.get("matplotlib.pyplot") and sys.modules["matplotlib.pyplot"].close("all")


def track_fits(shell, experiment, cs=(0.01, 1.0)):
    shell.ok(SETUP)
    for c in cs:
        shell.ok(FIT.format(experiment=experiment, name=f"C{c}", c=c))
    flush()


# -- the same integration tests on every store ---------------------------------------------


def test_tracked_cell_is_a_complete_run_on_every_store(store_shell, any_store):
    import mlflow

    experiment = any_store.name("capture")
    store_shell.ok(SETUP + "import nbtrack\nimport matplotlib.pyplot as plt")
    store_shell.ok(f"%%track -e {experiment} -n fit\nC = 0.5\n"
                   "clf = LogisticRegression(C=C, max_iter=500).fit(X, y)\n"
                   "for step in range(3):\n    nbtrack.log_metric('loss', 1 / (step + 1), step=step)\n"
                   "val_acc = clf.score(X, y)\nfig = plt.figure()\nfig.gca().plot([1, 2])")
    flush()
    run = store_shell.last()
    assert run.info.status == "FINISHED"
    assert run.data.params["C"] == "0.5" and run.data.params["clf.C"] == "0.5"
    assert 0.9 < run.data.metrics["val_acc"] <= 1
    history = store_shell.client.get_metric_history(run.info.run_id, "loss")
    assert sorted((p.step, round(p.value, 3)) for p in history) == [(0, 1), (1, 0.5), (2, 0.333)]
    paths = store_shell.artifact_paths(run.info.run_id)
    assert "cell/source.py" in paths and "lineage/history.py" in paths
    assert any(p.startswith("figures/") and p.endswith(".png") for p in paths)
    assert "C = 0.5" in store_shell.artifact_text(run.info.run_id, "cell/source.py")
    if any_store.team is not None:
        assert run.data.tags["mlflow.user"] == "alice"
    models = store_shell.client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert len(models) == 1
    assert len(mlflow.pyfunc.load_model(models[0].model_uri).predict(iris_head())) == 4


def iris_head():
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True, as_frame=True)[0].head(4)


def test_board_registers_moves_champion_and_another_process_loads_it(store_shell, any_store):
    experiment, model = any_store.name("board"), any_store.name("iris")
    track_fits(store_shell, experiment)
    board = store_shell.ip.run_line_magic("track_board", f"-e {experiment} -m val_acc")
    assert list(board.runs["run"]) == ["C1.0", "C0.01"]
    board.select(board.runs["run_id"][0])
    board.model_name.value = model
    board.register_button.click()
    assert f"Registered {model} v1" in board.message.value
    board.set_alias_button.click()
    assert "nothing held it" in board.message.value
    assert board.runs["models"][0] == [f"{model} v1 @champion"]
    holder = store_shell.client.get_model_version_by_alias(model, "champion")
    assert holder.version in (1, "1") and holder.run_id == board.runs["run_id"][0]
    code = ("import mlflow\nfrom sklearn.datasets import load_iris\n"
            "X, _ = load_iris(return_X_y=True, as_frame=True)\n"
            f"model = mlflow.pyfunc.load_model('models:/{model}@champion')\n"
            "print('predicted', len(model.predict(X.head(5))))\n")
    # The serving process gets the store and the login from its environment, as the README says.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("predicted 5")


def test_registry_versions_aliases_and_move_records_on_every_store(store_shell, any_store):
    from nbtrack.store import registry

    experiment, model = any_store.name("registry"), any_store.name("reg")
    track_fits(store_shell, experiment, cs=(1.0,))
    run = store_shell.last()
    logged = registry.logged_models(run.info.run_id, run.info.experiment_id)
    first = registry.register(logged[0].model_uri, model, run_id=run.info.run_id)
    second = registry.register(logged[0].model_uri, model, run_id=run.info.run_id)
    assert (str(first.version), str(second.version)) == ("1", "2")
    assert registry.alias_holder(model, "champion") is None
    assert registry.set_alias(model, "champion", 1, moved_by="ana", notebook="a.ipynb") is None
    previous = registry.set_alias(model, "champion", 2, moved_by="ana", notebook="a.ipynb")
    assert str(previous.version) == "1"
    refs = registry.versions_of_runs([run.info.run_id])[run.info.run_id]
    assert sorted((r.version, r.aliases) for r in refs) == [("1", ()), ("2", ("champion",))]
    tags = registry.get_version(model, 2).tags
    assert tags["nbtrack.alias.champion.moved_by"] == "ana"
    assert tags["nbtrack.alias.champion.previous"] == "1"


def test_nbtrack_run_and_promote_on_every_store(any_store, tmp_path):
    experiment, model = any_store.name("batch"), any_store.name("swept")
    folder = Path.cwd()
    # One execution (a kernel costs seconds) with two tracked cells; sweeps are test_batch's.
    write_notebook(folder / "fit.ipynb", [
        "%load_ext nbtrack", SETUP,
        "%%track -n small\nclf = LogisticRegression(C=C, max_iter=500).fit(X, y)\n"
        "val_acc = clf.score(X, y)",
        "%%track -n large\nbig_C = C * 100\nclf = LogisticRegression(C=big_C, max_iter=500)"
        ".fit(X, y)\nval_acc = clf.score(X, y)", FLUSH_CELL], parameters="C = 1.0")
    done = nbtrack_cli("run", "fit.ipynb", "-p", "C=0.01", "-e", experiment, "-m", "val_acc",
                       "--no-progress", cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = client().search_runs([client().get_experiment_by_name(experiment).experiment_id],
                                order_by=["metrics.val_acc DESC"])
    assert sorted(r.info.run_name for r in runs) == ["large", "small"]
    assert [r.data.params["C"] for r in runs] == ["0.01", "0.01"]  # injected by -p
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["nbtrack.batch"] == "nbtrack run"
        notebooks = [a.path for a in client().list_artifacts(run.info.run_id, "notebook")]
        assert len(notebooks) == 1 and notebooks[0].endswith(".ipynb")
        if any_store.team is not None:
            assert run.data.tags["mlflow.user"] == "alice"
    best = runs[0].info.run_id
    promoted = nbtrack_cli("promote", best, "--model", model, cwd=folder)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == (f"registered {model} v1 from run {best}; "
                                       "@champion moved to v1 (previously nobody)")
    assert client().get_model_version_by_alias(model, "champion").run_id == best


# -- two people on the team server (basic-auth) ------------------------------------------------


def readme_grant(auth, resource: str, resource_id: str, **replace) -> None:
    """Run the README's ``grant_user_permission`` line for ``resource`` with this test's ids."""
    line = next(line for line in readme_blocks("python")[0].splitlines()
                if f'grant_user_permission("bob", "{resource}"' in line)
    line = line.split("#")[0].replace('"1"', f'"{resource_id}"')
    line = line.replace('"invoice-classifier"', f'"{resource_id}"')
    for old, new in replace.items():
        line = line.replace(f'"{old}"', f'"{new}"')
    exec(line, {"auth": auth})


def login_with_readme_credentials(home: Path, user: str) -> None:
    """Write ``~/.mlflow/credentials`` for ``user`` with the README's commands."""
    block = next(b for b in readme_blocks("bash") if ".mlflow/credentials" in b)
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bash", "-euc", block.replace("alice", user)], check=True,
                   env={"HOME": str(home), "PATH": os.environ["PATH"]})


@pytest.mark.parametrize("any_store", TEAM, indirect=True)
def test_two_users_in_two_kernels_share_an_experiment_and_rank_together(any_store, tmp_path,
                                                                       monkeypatch):
    import nbtrack

    team, experiment = any_store.team, any_store.name("team")
    cells = ["%load_ext nbtrack", SETUP] + [
        FIT.format(experiment=experiment, name=f"{{user}}-C{c}", c=c) for c in (0.01, 1.0)]
    alice_nb = write_notebook(tmp_path / "alice.ipynb",
                              [c.format(user="alice") for c in cells] + [FLUSH_CELL])
    run_notebook(alice_nb, tmp_path, env=dict(HOME=str(tmp_path / "home")))

    experiment_id = client().get_experiment_by_name(experiment).experiment_id
    with monkeypatch.context() as admin:
        readme_grant(team.auth(admin), "experiment", experiment_id)

    # Bob logs in the README's way: ~/.mlflow/credentials, nothing in his environment.
    bob_home = tmp_path / "bob-home"
    login_with_readme_credentials(bob_home, "bob")
    bob_nb = write_notebook(tmp_path / "bob.ipynb",
                            [cells[0], cells[1], FIT.format(experiment=experiment, name="bob-C100",
                                                            c=100.0), FLUSH_CELL])
    with monkeypatch.context() as bob:
        bob.delenv("MLFLOW_TRACKING_USERNAME")
        bob.delenv("MLFLOW_TRACKING_PASSWORD")
        run_notebook(bob_nb, tmp_path, env=dict(HOME=str(bob_home)))

    runs = client().search_runs([experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    assert {r.info.run_name: r.data.tags["mlflow.user"] for r in runs} == {
        "alice-C0.01": "alice", "alice-C1.0": "alice", "bob-C100": "bob"}
    board = nbtrack.leaderboard(experiment=experiment, metric="val_acc")
    assert sorted(board.runs["user"]) == ["alice", "alice", "bob"]
    assert list(board.runs["val_acc"]) == sorted(board.runs["val_acc"], reverse=True)
    assert ">bob<" in board.table.value and ">alice<" in board.table.value
    board.filter_box.value = "tags.mlflow.user = 'bob'"
    assert list(board.runs["run"]) == ["bob-C100"] and list(board.runs["user"]) == ["bob"]
    board.filter_box.value = "tags.mlflow.user = 'alice'"
    assert sorted(board.runs["run"]) == ["alice-C0.01", "alice-C1.0"]


@pytest.mark.parametrize("any_store", TEAM, indirect=True)
def test_user_without_edit_on_the_model_cannot_move_champion_and_the_board_says_why(
        store_shell, any_store, monkeypatch):
    team, experiment, model = any_store.team, any_store.name("perm"), any_store.name("guarded")
    track_fits(store_shell, experiment)  # as alice, who then owns (MANAGE) what she creates
    board = store_shell.ip.run_line_magic("track_board", f"-e {experiment} -m val_acc")
    first, second = board.runs["run_id"]
    board.select(first)
    board.register(model)
    board.set_alias("champion")
    board.select(second)
    board.register(model)

    team.login(monkeypatch, "bob")  # READ only: the server's default_permission
    board.refresh()
    board.select(second)
    board.version_choice.value = (model, "2")
    board.set_alias_button.click()  # v1 holds it: the board asks first
    board.confirm_button.click()
    message = html.unescape(board.message.value)
    assert f"Could not move @champion of {model} to v2" in message
    assert "user 'bob' may not move @champion of registered model" in message
    assert "needs EDIT or MANAGE permission" in message and "PERMISSION_DENIED" in message
    assert "Traceback" not in message and len(message) < 600
    assert client().get_model_version_by_alias(model, "champion").version in (1, "1")
    assert board.register(model) is None
    assert f"may not add a version to registered model '{model}'" in html.unescape(
        board.message.value)

    with monkeypatch.context() as admin:
        readme_grant(team.auth(admin), "registered_model", model, READ="EDIT")
    team.login(monkeypatch, "bob")
    assert board.set_alias("champion", version=2) is not None
    holder = client().get_model_version_by_alias(model, "champion")
    assert str(holder.version) == "2"
    assert holder.tags["nbtrack.alias.champion.moved_by"] == "bob"


# -- secrets -------------------------------------------------------------------------------


def everything_the_store_holds(experiment: str, folder: Path) -> str:
    """Every param, tag, metric name and history, dataset, artifact (downloaded, all of them) and
    logged model of an experiment's runs, as one text."""
    import mlflow

    store = client()
    found = store.get_experiment_by_name(experiment)
    texts = [json.dumps([found.name, found.tags])]
    runs = store.search_runs([found.experiment_id], run_view_type=3)
    assert runs
    for run in runs:
        run_id = run.info.run_id
        texts.append(json.dumps([run.info.run_name, run.data.params, run.data.tags,
                                 sorted(run.data.metrics)]))
        for key in run.data.metrics:
            texts.append(json.dumps([(m.key, m.value, m.step, m.timestamp)
                                     for m in store.get_metric_history(run_id, key)]))
        for item in run.inputs.dataset_inputs:
            data = item.dataset
            texts.append(json.dumps([data.name, data.digest, data.source_type, data.source,
                                     data.schema, data.profile, [(t.key, t.value) for t in item.tags]]))
        local = Path(store.download_artifacts(run_id, "", dst_path=str(folder / run_id)))
        texts += [f.read_bytes().decode("utf-8", "replace") for f in local.rglob("*") if f.is_file()]
    for model in store.search_logged_models(experiment_ids=[found.experiment_id]):
        texts.append(json.dumps([model.name, model.params, model.tags], default=str))
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=model.artifact_location, dst_path=str(folder / model.model_id)))
        texts += [f.read_bytes().decode("utf-8", "replace") for f in local.rglob("*") if f.is_file()]
    return "\n".join(texts)


SECRETS_CELL = ('import os\ntoken = "tok-{tag}-live"\n'
                'config = {{"api_key": "key-{tag}-cfg", "lr": 0.1}}\n'
                'dsn = "postgresql://etl:dbpw-{tag}@db.internal:5432/sales"')
LEAKY_CELL = ("%%track -e {experiment} -n leaky\nimport nbtrack\n"
              "headers = {{'Authorization': 'Bearer ' + token}}\nrate = config['lr']\n"
              "engine_url = dsn\nconnect_with = config\n"
              "print(token, config['api_key'], dsn, os.environ['MLFLOW_TRACKING_PASSWORD'])\n"
              "for step in range(2):\n    nbtrack.log_metric('loss', rate * step, step=step)\n"
              "clf = LogisticRegression(max_iter=300).fit(X, y)\nscore = clf.score(X, y)")
FAILING_CELL = ("%%track -e {experiment} -n fails\n"
                "raise ValueError('cannot connect to ' + dsn + ' as ' + token + ' '"
                " + os.environ['MLFLOW_TRACKING_PASSWORD'])")


@pytest.mark.parametrize("any_store", TEAM, indirect=True)
def test_secrets_never_reach_the_team_store(store_shell, any_store, tmp_path):
    tag = uuid.uuid4().hex[:6]
    experiment = any_store.name("secrets")
    secrets = [os.environ["MLFLOW_TRACKING_PASSWORD"], f"tok-{tag}-live", f"key-{tag}-cfg",
               f"dbpw-{tag}"]
    cells = [SETUP, SECRETS_CELL.format(tag=tag), LEAKY_CELL.format(experiment=experiment),
             FAILING_CELL.format(experiment=experiment)]
    # In this kernel...
    for cell in cells[:3]:
        store_shell.ok(cell)
    assert not store_shell.run(cells[3]).success
    # ...and headless, where the notebook itself (snapshot, executed copy) is logged too.
    folder = Path.cwd()
    write_notebook(folder / "leaky.ipynb", ["%load_ext nbtrack", *cells])
    done = nbtrack_cli("run", "leaky.ipynb", "-e", experiment, "--no-progress", cwd=folder)
    assert done.returncode == 1, done.stderr  # the failing cell fails the execution
    flush()

    runs = client().search_runs([client().get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 4
    paths = [a.path for r in runs for a in client().list_artifacts(r.info.run_id, "notebook")]
    assert len(paths) == 2 and all(p.endswith(".ipynb") for p in paths)  # the executed copy
    stored = everything_the_store_holds(experiment, tmp_path / "downloaded")
    snapshots = [a.path for r in runs for a in client().list_artifacts(r.info.run_id, "lineage")
                 if a.path.endswith(".ipynb")]
    assert snapshots == ["lineage/leaky.ipynb", "lineage/leaky.ipynb"]
    assert "***REDACTED***" in stored  # the texts are there, with their secrets taken out
    for secret in secrets:
        for form in {secret, html.escape(secret), json.dumps(secret)[1:-1]}:
            assert form not in stored, f"secret {secret!r} reached the store"
