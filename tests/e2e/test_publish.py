"""``nbtrack push``: runs copied whole from the test's SQLite store to another store (a second SQLite
file, the README's team server over HTTP with basic-auth, a PostgreSQL database named by a URI
holding its password), compared field by field; pushed again without change; finished after a
push killed halfway; credentials never printed nor tagged.

The source runs are made with MLflow's own API (the same entities ``%%track`` writes), so each
field a push must carry is there on purpose: a metric series with steps and timestamps, nested
artifacts, a dataset input, a scikit-learn model with a signature, a parent and its children,
a failed run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import nbtrack_cli

ORIGIN_TAGS = ("nbtrack.origin.store", "nbtrack.origin.run_id", "nbtrack.origin.complete")
CRASH_ENV = "_NBTRACK_PUSH_CRASH_AFTER_STEPS"


def make_runs(experiment: str, tmp_path: Path, model: bool = True) -> list[str]:
    """A parent run and two children (one with a model, one FAILED); return their ids."""
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    mlflow.set_experiment(experiment)
    X, y = load_iris(return_X_y=True)
    files = tmp_path / "files"
    (files / "plots").mkdir(parents=True, exist_ok=True)
    (files / "notes.txt").write_text("first run\n")
    (files / "plots" / "curve.csv").write_text("step,loss\n0,1.0\n1,0.5\n")
    with mlflow.start_run(run_name="sweep") as parent:
        mlflow.log_params({"grid.C": "0.1,1"})
        mlflow.set_tag("team", "fraud")
        with mlflow.start_run(run_name="C0.1", nested=True) as first:
            mlflow.log_params({"C": 0.1, "max_iter": 300})
            for step in range(5):
                mlflow.log_metric("loss", 1.0 / (step + 1), step=step,
                                  timestamp=1_700_000_000_000 + step * 1000)
            mlflow.log_metric("loss", 0.15, step=4, timestamp=1_700_000_009_000)  # same step twice
            mlflow.log_metric("val_acc", 0.93)
            mlflow.log_artifacts(str(files))
            mlflow.log_input(mlflow.data.from_numpy(X, name="iris"), context="train")
            if model:
                fitted = LogisticRegression(C=0.1, max_iter=300).fit(X, y)
                mlflow.sklearn.log_model(fitted, name="clf", input_example=X[:3])
        with mlflow.start_run(run_name="C1", nested=True) as second:
            mlflow.log_params({"C": 1, "max_iter": 300})
            mlflow.log_metric("val_acc", 0.5)
            mlflow.end_run(status="FAILED")
    return [parent.info.run_id, first.info.run_id, second.info.run_id]


def copies(target_uri: str, experiment: str) -> dict:
    """The target's runs of ``experiment`` by the source run id they carry."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=target_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"experiment {experiment!r} was not created on the target"
    runs = client.search_runs([found.experiment_id], run_view_type=ViewType.ALL)
    by_origin = {}
    for run in runs:
        origin = run.data.tags["nbtrack.origin.run_id"]
        assert origin not in by_origin, f"run {origin} was copied twice"
        by_origin[origin] = run
    return by_origin


def artifact_files(client, run_id: str, tmp_path: Path) -> dict[str, str]:
    local = Path(client.download_artifacts(run_id, "", str(tmp_path / uuid.uuid4().hex)))
    return {str(p.relative_to(local)): p.read_text(errors="replace") for p in sorted(local.rglob("*"))
            if p.is_file()}


def assert_same_runs(source_uri: str, target_uri: str, experiment: str, run_ids: list[str],
                     tmp_path: Path) -> dict:
    """Every source run has one copy on the target, equal field by field; return the copies."""
    import mlflow
    from mlflow import MlflowClient

    from nbtrack.store.kernel_state import fluent_tracking_uri

    source, target = MlflowClient(tracking_uri=source_uri), MlflowClient(tracking_uri=target_uri)
    copied = copies(target_uri, experiment)
    assert set(copied) == set(run_ids)
    for run_id in run_ids:
        a, b = source.get_run(run_id), copied[run_id]
        assert "nbtrack.origin.complete" not in b.data.tags  # its end marks a copy whole
        assert b.info.run_id != a.info.run_id or source_uri != target_uri
        assert b.data.params == a.data.params
        tags_a = {k: v for k, v in a.data.tags.items() if k != "mlflow.parentRunId"}
        tags_b = {k: v for k, v in b.data.tags.items()
                  if k not in ORIGIN_TAGS and k != "mlflow.parentRunId"}
        assert tags_b == tags_a
        parent = a.data.tags.get("mlflow.parentRunId")
        if parent:  # the copy points at the parent's copy
            assert b.data.tags["mlflow.parentRunId"] == copied[parent].info.run_id
        else:
            assert "mlflow.parentRunId" not in b.data.tags
        assert (b.info.status, b.info.start_time, b.info.end_time, b.info.run_name) == \
               (a.info.status, a.info.start_time, a.info.end_time, a.info.run_name)
        assert b.data.metrics == a.data.metrics
        for key in a.data.metrics:
            def points(client, rid, key=key):
                return sorted((m.step, m.timestamp, m.value)
                              for m in client.get_metric_history(rid, key))
            assert points(target, b.info.run_id) == points(source, run_id)
        assert sorted((d.dataset.name, d.dataset.digest) for d in b.inputs.dataset_inputs) == \
               sorted((d.dataset.name, d.dataset.digest) for d in a.inputs.dataset_inputs)
        assert artifact_files(target, b.info.run_id, tmp_path) == \
               artifact_files(source, run_id, tmp_path)
        models_a = source.search_logged_models(experiment_ids=[a.info.experiment_id],
                                               filter_string=f"source_run_id = '{run_id}'")
        models_b = target.search_logged_models(experiment_ids=[b.info.experiment_id],
                                               filter_string=f"source_run_id = '{b.info.run_id}'")
        assert [m.name for m in models_b] == [m.name for m in models_a]
        for model_a, model_b in zip(models_a, models_b, strict=True):
            assert str(model_b.status) == str(model_a.status)
            from sklearn.datasets import load_iris

            X, _ = load_iris(return_X_y=True)
            with fluent_tracking_uri(source_uri):
                expected = mlflow.pyfunc.load_model(model_a.model_uri)
            with fluent_tracking_uri(target_uri):  # models:/<id> read from the target
                loaded = mlflow.pyfunc.load_model(model_b.model_uri)
            assert loaded.metadata.signature == expected.metadata.signature
            assert loaded.metadata.signature is not None
            assert loaded.metadata.model_id == model_b.model_id
            assert np.array_equal(loaded.predict(X), expected.predict(X))
            assert [o.model_id for o in b.outputs.model_outputs] == [model_b.model_id]
    return copied


def test_push_copies_runs_whole_to_another_sqlite_store_and_again_changes_nothing(
        store, tmp_path):
    experiment = "fraud"
    run_ids = make_runs(experiment, tmp_path)
    target = f"sqlite:///{tmp_path / 'team.db'}"

    done = nbtrack_cli("push", "-e", experiment, "--to", target, "--no-progress",
                       cwd=Path.cwd(), check=True)
    assert "3 pushed" in done.stdout and "0 failed" in done.stdout, done.stdout
    copied = assert_same_runs(store, target, experiment, run_ids, tmp_path)
    assert {r.data.tags["nbtrack.origin.store"] for r in copied.values()} == {store}

    again = nbtrack_cli("push", "-e", experiment, "--to", target, "--no-progress",
                        cwd=Path.cwd(), check=True)
    assert "0 pushed" in again.stdout and "3 already there" in again.stdout, again.stdout
    assert {k: r.info.run_id for k, r in copies(target, experiment).items()} == \
           {k: r.info.run_id for k, r in copied.items()}
    assert_same_runs(store, target, experiment, run_ids, tmp_path)


def test_push_of_one_child_brings_its_parent_and_links_them(store, tmp_path):
    parent, first, _ = make_runs("fraud", tmp_path, model=False)
    target = f"sqlite:///{tmp_path / 'team.db'}"

    nbtrack_cli("push", first, "--to", target, cwd=Path.cwd(), check=True)
    copied = copies(target, "fraud")
    assert set(copied) == {parent, first}
    assert copied[first].data.tags["mlflow.parentRunId"] == copied[parent].info.run_id


def test_push_killed_halfway_is_finished_by_the_next_without_duplicates(store, tmp_path):
    """Fault injection: CRASH_ENV makes the push process end abruptly (os._exit, as a kill
    would) after that many copy steps. The parent takes 3 (create, one batch of params, tags
    and points, end), its first child then create, batch, dataset input: 6 steps end the push
    inside the second run, its metrics written, its artifacts, model and end not."""
    experiment = "fraud"
    run_ids = make_runs(experiment, tmp_path, model=False)
    target = f"sqlite:///{tmp_path / 'team.db'}"

    killed = nbtrack_cli("push", "-e", experiment, "--to", target, "--no-progress",
                         cwd=Path.cwd(), env={CRASH_ENV: "6"})
    assert killed.returncode == 3, killed.stdout + killed.stderr
    partial = copies(target, experiment)
    assert set(partial) == set(run_ids[:2])
    assert partial[run_ids[0]].info.status == "FINISHED"
    half = partial[run_ids[1]]
    assert half.info.status == "RUNNING"
    assert half.data.metrics  # its metrics were written before the kill

    resumed = nbtrack_cli("push", "-e", experiment, "--to", target, "--no-progress",
                          cwd=Path.cwd(), check=True)
    assert "1 pushed, 1 finished" in resumed.stdout and "1 already there" in resumed.stdout, \
        resumed.stdout
    copied = assert_same_runs(store, target, experiment, run_ids, tmp_path)
    assert copied[run_ids[1]].info.run_id == half.info.run_id  # finished in place


def test_push_of_unknown_runs_is_one_line_and_exit_2(store, tmp_path):
    target = f"sqlite:///{tmp_path / 'team.db'}"
    done = nbtrack_cli("push", "0123456789abcdef", "--to", target, cwd=Path.cwd())
    assert done.returncode == 2 and "no run '0123456789abcdef'" in done.stderr, done.stderr
    done = nbtrack_cli("push", "--to", target, cwd=Path.cwd())
    assert done.returncode == 2 and "say which runs" in done.stderr


def test_push_to_the_team_server_with_basic_auth_keeps_the_password_out(store, tmp_path,
                                                                          team_server):
    experiment = "fraud-" + uuid.uuid4().hex[:8]
    run_ids = make_runs(experiment, tmp_path)
    password = team_server.users["alice"]
    login = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": password}

    done = nbtrack_cli("push", "-e", experiment, "--to", team_server.url, cwd=Path.cwd(),
                       env=login, check=True)
    assert "3 pushed" in done.stdout, done.stdout
    assert password not in done.stdout + done.stderr
    with pytest.MonkeyPatch.context() as patch:
        for name, value in login.items():
            patch.setenv(name, value)
        copied = assert_same_runs(store, team_server.url, experiment, run_ids, tmp_path)
        for run in copied.values():
            assert password not in repr(run.data.tags) + repr(run.data.params)

    wrong = nbtrack_cli("push", "-e", experiment, "--to", team_server.url, cwd=Path.cwd(),
                        env={**login, "MLFLOW_TRACKING_PASSWORD": "not alice's password"})
    assert wrong.returncode != 0
    assert "not alice's password" not in wrong.stdout + wrong.stderr

    # bob may read alice's experiment (the server's default), not write to it
    more = make_runs(experiment, tmp_path, model=False)
    bob = {"MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": team_server.users["bob"]}
    refused = nbtrack_cli("push", "-e", experiment, "--to", team_server.url, "--no-progress",
                          cwd=Path.cwd(), env=bob)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "0 pushed, 3 already there, 3 failed" in refused.stdout, refused.stdout
    line = (f"user 'bob' may not write to experiment '{experiment}' on the target: that needs "
            "EDIT or MANAGE permission there")
    failed = [text for text in refused.stderr.splitlines() if text.startswith("failed:")]
    assert len(failed) == 3 and all(line in text for text in failed), refused.stderr
    assert all(len(text) < 400 and "Traceback" not in text for text in failed)
    assert not set(more) & set(copies_as(team_server, login, experiment))


def copies_as(team_server, login: dict, experiment: str) -> dict:
    """:func:`copies` on the team server, logged in with ``login``."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in login.items():
            patch.setenv(name, value)
        return copies(team_server.url, experiment)


def test_push_to_a_postgresql_uri_never_prints_nor_tags_its_password(store, tmp_path,
                                                                      postgres_cluster):
    database = "push_" + uuid.uuid4().hex[:8]
    postgres_cluster.create_database(database)
    password = postgres_cluster.password
    target = (f"postgresql://{postgres_cluster.user}:{password.replace(' ', '%20')}"
              f"@127.0.0.1:{postgres_cluster.port}/{database}")
    run_ids = make_runs("fraud", tmp_path, model=False)

    done = nbtrack_cli("push", "-e", "fraud", "--to", target, cwd=Path.cwd(), check=True)
    assert "3 pushed" in done.stdout, done.stdout
    output = done.stdout + done.stderr
    assert password not in output and password.replace(" ", "%20") not in output
    assert f"127.0.0.1:{postgres_cluster.port}/{database}" in output
    copied = assert_same_runs(store, target, "fraud", run_ids, tmp_path)

    # On from PostgreSQL: the origin the copies carry is its URI without the login.
    onward = f"sqlite:///{tmp_path / 'onward.db'}"
    done = nbtrack_cli("push", "-e", "fraud", "--to", onward, cwd=Path.cwd(), check=True,
                       env={"MLFLOW_TRACKING_URI": target})
    assert "3 pushed" in done.stdout and password.split()[-1] not in done.stdout + done.stderr
    for run in copies(onward, "fraud").values():
        assert run.data.tags["nbtrack.origin.store"] == \
               f"postgresql://127.0.0.1:{postgres_cluster.port}/{database}"
        assert run.data.tags["nbtrack.origin.run_id"] in {r.info.run_id for r in copied.values()}


def test_export_then_import_copies_runs_whole_and_importing_again_changes_nothing(
        store, tmp_path):
    run_ids = make_runs("fraud", tmp_path)
    bundle = tmp_path / "runs.zip"
    done = nbtrack_cli("export", "-e", "fraud", "-o", str(bundle), "--no-progress",
                       cwd=Path.cwd(), check=True)
    assert "3 pushed" in done.stdout and bundle.is_file(), done.stdout
    with zipfile.ZipFile(bundle) as opened:
        manifest = json.loads(opened.read("manifest.json"))
        assert "mlflow.db" in manifest["files"]
        for name, entry in manifest["files"].items():
            assert hashlib.sha256(opened.read(name)).hexdigest() == entry["sha256"]

    target = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    imported = nbtrack_cli("import", str(bundle), "--no-progress", cwd=Path.cwd(), check=True,
                           env={"MLFLOW_TRACKING_URI": target})
    assert "3 pushed" in imported.stdout, imported.stdout
    copied = assert_same_runs(store, target, "fraud", run_ids, tmp_path)
    assert {r.data.tags["nbtrack.origin.store"] for r in copied.values()} == {store}

    again = nbtrack_cli("import", str(bundle), "--no-progress", cwd=Path.cwd(), check=True,
                        env={"MLFLOW_TRACKING_URI": target})
    assert "0 pushed" in again.stdout and "3 already there" in again.stdout, again.stdout


def test_import_refuses_truncated_and_corrupt_bundles_and_imports_nothing(store, tmp_path):
    make_runs("fraud", tmp_path, model=False)
    bundle = tmp_path / "runs.zip"
    nbtrack_cli("export", "-e", "fraud", "-o", str(bundle), cwd=Path.cwd(), check=True)
    data = bundle.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    # Same manifest, one member changed (a valid zip: only the manifest's sha256 catches it).
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(tampered, "w") as out:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename.endswith("notes.txt"):
                content = b"changed\n"
            out.writestr(info.filename, content)
    target_db = tmp_path / "elsewhere.db"
    for broken, why in ((truncated, "corrupt or truncated"), (tampered, "does not match its "
                                                                        "sha256")):
        done = nbtrack_cli("import", str(broken), cwd=Path.cwd(),
                           env={"MLFLOW_TRACKING_URI": f"sqlite:///{target_db}"})
        assert done.returncode == 2, done.stdout + done.stderr
        assert why in done.stderr and "nothing was imported" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not target_db.exists()  # refused before the store was touched


def test_push_register_makes_the_versions_and_aliases_and_moves_a_taken_one_only_when_asked(
        store, tmp_path):
    """--register re-creates the pushed runs' registered versions (served from the target by
    alias), finds them again on the next push, and leaves the team's @champion where it is unless
    --move-aliases.
    """
    import mlflow
    from mlflow import MlflowClient
    from sklearn.datasets import load_iris

    X, _ = load_iris(return_X_y=True)
    _, first, _ = make_runs("fraud", tmp_path)
    local = MlflowClient()
    (model,) = local.search_logged_models(experiment_ids=[local.get_run(first).info.experiment_id])
    local.create_registered_model("fraud-clf", description="the fraud model")
    one = local.create_model_version("fraud-clf", f"models:/{model.model_id}", run_id=first,
                                     model_id=model.model_id, tags={"reviewed": "yes"})
    local.set_registered_model_alias("fraud-clf", "champion", one.version)
    target = f"sqlite:///{tmp_path / 'team.db'}"
    team = MlflowClient(tracking_uri=target)

    done = nbtrack_cli("push", first, "--register", "--to", target, "--no-progress",
                       cwd=Path.cwd(), check=True)
    assert "model versions: 1 registered, 0 already there, 0 failed" in done.stdout, done.stdout
    assert "@champion set" in done.stdout
    copy = copies(target, "fraud")[first]
    (version,) = team.search_model_versions("name = 'fraud-clf'")
    assert version.run_id == copy.info.run_id and version.tags["reviewed"] == "yes"
    assert team.get_registered_model("fraud-clf").description == "the fraud model"
    assert team.get_registered_model("fraud-clf").aliases == {"champion": version.version}
    (model_copy,) = team.search_logged_models(
        experiment_ids=[copy.info.experiment_id],
        filter_string=f"source_run_id = '{copy.info.run_id}'")
    assert version.source == f"models:/{model_copy.model_id}" != f"models:/{model.model_id}"
    mlflow.set_tracking_uri(target)
    try:
        served = mlflow.pyfunc.load_model("models:/fraud-clf@champion")
    finally:
        mlflow.set_tracking_uri(store)
    expected = mlflow.pyfunc.load_model("models:/fraud-clf@champion").predict(X)
    assert (served.predict(X) == expected).all()

    again = nbtrack_cli("push", first, "--register", "--to", target, "--no-progress",
                        cwd=Path.cwd(), check=True)
    assert "model versions: 0 registered, 1 already there, 0 failed" in again.stdout, again.stdout
    assert len(team.search_model_versions("name = 'fraud-clf'")) == 1

    # The team crowns a version of its own; locally a newer run becomes the champion.
    mlflow.set_tracking_uri(target)  # MLflow resolves models:/ with the fluent API's store
    try:
        theirs = team.create_model_version("fraud-clf", f"models:/{model_copy.model_id}",
                                           run_id=version.run_id, model_id=model_copy.model_id)
    finally:
        mlflow.set_tracking_uri(store)
    team.set_registered_model_alias("fraud-clf", "champion", theirs.version)
    _, newer, _ = make_runs("fraud", tmp_path)
    (newer_model,) = local.search_logged_models(
        experiment_ids=[local.get_run(newer).info.experiment_id],
        filter_string=f"source_run_id = '{newer}'")
    two = local.create_model_version("fraud-clf", f"models:/{newer_model.model_id}", run_id=newer,
                                     model_id=newer_model.model_id)
    local.set_registered_model_alias("fraud-clf", "champion", two.version)

    kept = nbtrack_cli("push", newer, "--register", "--to", target, "--no-progress",
                       cwd=Path.cwd(), check=True)
    assert "model versions: 1 registered" in kept.stdout, kept.stdout
    assert f"@champion still names version {theirs.version} there: --move-aliases" in kept.stdout
    assert team.get_registered_model("fraud-clf").aliases == {"champion": theirs.version}
    pushed = team.search_model_versions(
        f"name = 'fraud-clf' and run_id = '{copies(target, 'fraud')[newer].info.run_id}'")
    assert len(pushed) == 1

    moved = nbtrack_cli("push", newer, "--register", "--move-aliases", "--to", target,
                        "--no-progress", cwd=Path.cwd(), check=True)
    assert "model versions: 0 registered, 1 already there" in moved.stdout, moved.stdout
    assert "@champion moved" in moved.stdout
    assert team.get_registered_model("fraud-clf").aliases == {"champion": pushed[0].version}
    assert len(team.search_model_versions("name = 'fraud-clf'")) == 3

    refused = nbtrack_cli("push", newer, "--move-aliases", "--to", target, cwd=Path.cwd())
    assert refused.returncode == 2 and "add --register" in refused.stderr


def test_push_leaves_secrets_of_a_run_logged_by_hand_behind(store, tmp_path, monkeypatch):
    """A run logged with MLflow by hand holds what nbtrack would never log: a secret-named param,
    a password in a URL, an environment token pasted into a note. The copy has none of them;
    everything else is as it was.
    """
    import mlflow

    monkeypatch.setenv("PAYMENTS_API_TOKEN", "tok-7d1e0c55aa")
    files = tmp_path / "files"
    files.mkdir()
    (files / "notes.txt").write_text("called the API with tok-7d1e0c55aa and sk-live-99x1q\n")
    (files / "table.csv").write_text("step,loss\n0,1.0\n")
    (files / "weights.bin").write_bytes(b"\x00tok-7d1e0c55aa\xff")  # not text: goes as it is
    mlflow.set_experiment("by-hand")
    with mlflow.start_run(run_name="hand") as run:
        mlflow.log_params({"api_key": "sk-live-99x1q", "db": "postgresql://ann:hunter22@db/x",
                           "C": 0.5})
        mlflow.set_tag("note", "key sk-live-99x1q")
        mlflow.log_artifacts(str(files))
    target = f"sqlite:///{tmp_path / 'team.db'}"

    done = nbtrack_cli("push", run.info.run_id, "--to", target, "--no-progress", cwd=Path.cwd(),
                       check=True)
    assert "secret(s) left out or redacted" in done.stdout, done.stdout
    copy = copies(target, "by-hand")[run.info.run_id]
    assert "api_key" not in copy.data.params
    assert copy.data.params["C"] == "0.5"
    assert copy.data.params["db"] == "postgresql://ann:***REDACTED***@db/x"
    assert copy.data.tags["note"] == "key ***REDACTED***"
    from mlflow import MlflowClient

    files = artifact_files(MlflowClient(tracking_uri=target), copy.info.run_id, tmp_path)
    assert files["notes.txt"] == "called the API with ***REDACTED*** and ***REDACTED***\n"
    assert files["table.csv"] == "step,loss\n0,1.0\n"
    local = Path(MlflowClient(tracking_uri=target).download_artifacts(
        copy.info.run_id, "weights.bin", str(tmp_path / "w")))
    assert local.read_bytes() == b"\x00tok-7d1e0c55aa\xff"


def test_push_to_a_server_that_is_down_waits_then_is_kept_and_sync_finishes_it(store, tmp_path):
    """The team server is down: push waits (NBTRACK_PUSH_WAIT_SECONDS), keeps the runs in the
    journal and says so; `nbtrack sync` leaves them while it is still down and pushes them whole
    once it answers, then has nothing left.
    """
    from servers import sqlite_http_server

    run_ids = make_runs("fraud", tmp_path, model=False)
    folder = tmp_path / "server"
    folder.mkdir()
    server = sqlite_http_server(folder)  # not started yet: down
    wait = {"NBTRACK_PUSH_WAIT_SECONDS": "3"}
    done = nbtrack_cli("push", "-e", "fraud", "--to", server.url, "--no-progress",
                       cwd=Path.cwd(), env=wait)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"waiting for {server.url}, which does not answer" in done.stderr
    assert "3 run(s) kept in" in done.stderr and "`nbtrack sync` pushes them" in done.stderr
    (kept,) = (tmp_path / "journal" / "pushes").glob("*.json")
    assert kept.stat().st_mode & 0o777 == 0o600  # a target URI may hold a password

    still = nbtrack_cli("sync", cwd=Path.cwd())
    assert still.returncode == 1 and "pending push of 3 run(s)" in still.stdout, still.stdout
    assert kept.exists()

    server.start()
    try:
        synced = nbtrack_cli("sync", cwd=Path.cwd(), check=True)
        assert f"push to {server.url} finished: 3 pushed" in synced.stdout, synced.stdout
        assert_same_runs(store, server.url, "fraud", run_ids, tmp_path)
        assert not kept.exists()
        again = nbtrack_cli("sync", cwd=Path.cwd(), check=True)
        assert "nothing to sync" in again.stdout, again.stdout
    finally:
        server.stop()


def test_push_cut_by_the_server_killed_midway_is_finished_by_sync_without_duplicates(
        store, tmp_path):
    """The team server is SIGKILLed while a push runs: the runs it could not take are kept (the
    one it was writing, half there, among them); started again on its same files, `nbtrack sync`
    finishes the half one in place and pushes the rest, each once.
    """
    import signal
    import subprocess
    import sys

    import mlflow
    from servers import MlflowServer, sqlite_http_server

    run_ids = make_runs("fraud", tmp_path)
    for number in range(12):  # enough runs that the push is still going when the server dies
        with mlflow.start_run(run_name=f"extra-{number}") as run:
            mlflow.log_params({"n": number, "note": "x" * 50})
            mlflow.log_metrics({"loss": 1 / (number + 1), "acc": number / 12})
        run_ids.append(run.info.run_id)
    folder = tmp_path / "server"
    folder.mkdir()
    server = sqlite_http_server(folder).start()
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "NBTRACK_PUSH_WAIT_SECONDS": "1"}
    push = subprocess.Popen([sys.executable, "-m", "nbtrack", "push", "-e", "fraud", "--to",
                             server.url, "--no-progress"], cwd=Path.cwd(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = push.stdout.readline()
        assert first.startswith("pushed"), first + push.stderr.read()
        os.killpg(server.process.pid, signal.SIGKILL)  # the server dies mid-push
        server.process.wait(timeout=30)
        out, err = push.communicate(timeout=600)
    finally:
        push.kill()
    assert push.returncode == 1, out + err
    kept = re.search(r"(\d+) run\(s\) kept in", err)
    assert kept and 1 <= int(kept.group(1)) < len(run_ids), out + err

    again = MlflowServer(server.command, server.env, server.port, folder / "again.log").start()
    try:
        synced = nbtrack_cli("sync", cwd=Path.cwd(), check=True)
        finished = re.search(rf"push to {again.url} finished: (.*)", synced.stdout)
        assert finished, synced.stdout
        done = dict(reversed(part.split(" ", 1)) for part in finished.group(1).split(", "))
        # what was kept (a half-written run finished in place among them) and the parents
        # the selection brings, already there
        assert int(done.get("pushed", 0)) + int(done.get("finished", 0)) == int(kept.group(1))
        copied = assert_same_runs(store, again.url, "fraud", run_ids, tmp_path)  # each once
        assert all(r.info.status in ("FINISHED", "FAILED", "KILLED") for r in copied.values())
    finally:
        again.stop()
