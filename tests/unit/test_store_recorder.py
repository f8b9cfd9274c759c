"""Writing records as MLflow runs (nbtrack/store/recorder.py), into a real temporary SQLite store,
read back with MLflow's own client."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from nbtrack.record import (
    FAILED,
    FINISHED,
    Artifact,
    CellRecord,
    DataCapture,
    ModelCapture,
    Series,
)
from nbtrack.store.recorder import Recorder, store_refused


def series(key: str, values) -> Series:
    points = Series(key)
    for step, value in enumerate(values):
        points.add(float(value), step, 1_700_000_000_000 + step)
    return points


def a_record(**fields) -> CellRecord:
    values = dict(
        experiment="exp", run_name="fit #3", start_time_ms=1_700_000_000_000,
        end_time_ms=1_700_000_005_000, status=FINISHED,
        params={"C": "0.1", "model": "logreg"}, metrics={"auc": 0.91},
        series=(series("loss", [0.9, 0.5, 0.2]),),
        tags={"nbtrack.cell": "c1", "mlflow.source.type": "NOTEBOOK"},
        artifacts=(Artifact("cell/source.py", b"C = 0.1\n"),
                   Artifact("lineage/history.py", b"# In[1]:\nC = 0.1\n")),
        datasets=(DataCapture("X", pd.DataFrame({"a": [1, 2, 3]}), "read"),),
    )
    values.update(fields)
    return CellRecord(**values)


def runs_of(client, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_a_record_becomes_one_complete_run(store, client):
    outcome = Recorder(store).write(a_record())
    assert outcome.problems == () and not outcome.retry and outcome.tracking_uri == store
    run = client.get_run(outcome.run_id)
    assert run.info.run_name == "fit #3" and run.info.status == FINISHED
    assert (run.info.start_time, run.info.end_time) == (1_700_000_000_000, 1_700_000_005_000)
    assert run.data.params == {"C": "0.1", "model": "logreg"}
    assert run.data.metrics == {"auc": 0.91, "loss": 0.2}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [
        (0, 0.9), (1, 0.5), (2, 0.2)]
    assert run.data.tags["nbtrack.cell"] == "c1"
    source = Path(client.download_artifacts(run.info.run_id, "cell/source.py")).read_text()
    assert source == "C = 0.1\n"
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.name == "X"
    assert [(t.key, t.value) for t in dataset.tags] == [("mlflow.data.context", "read")]
    assert [r.info.run_id for r in runs_of(client, "exp")] == [outcome.run_id]


def test_a_failed_cells_record_ends_its_run_failed(store, client):
    outcome = Recorder(store).write(a_record(status=FAILED, artifacts=(
        Artifact("error/traceback.txt", b"Traceback...\nValueError: boom"),)))
    run = client.get_run(outcome.run_id)
    assert run.info.status == FAILED
    assert [a.path for a in client.list_artifacts(run.info.run_id, "error")] == [
        "error/traceback.txt"]


def test_more_params_and_tags_than_one_batch_takes_are_all_written(store, client):
    params = {f"p{i:03d}": str(i) for i in range(250)}
    outcome = Recorder(store).write(a_record(params=params))
    assert client.get_run(outcome.run_id).data.params == params


def test_a_write_cut_short_resumes_in_the_same_run_without_repeating_parts(store, client):
    saved: list[dict] = []

    class KernelDied(Exception):
        pass

    def save_and_die_after_values(progress):
        # The injected fault: the kernel dies right after the journal noted the values written.
        saved.append({"run_id": progress.get("run_id"), "done": list(progress.get("done", []))})
        if "values" in progress.get("done", []):
            raise KernelDied

    record = a_record()
    with pytest.raises(KernelDied):
        Recorder(store).write(record, save_progress=save_and_die_after_values)
    progress = saved[-1]
    assert progress["done"] == ["values"]
    first = client.get_run(progress["run_id"])
    assert first.info.status == "RUNNING" and first.data.params == record.params

    resumed_saves: list[list[str]] = []
    outcome = Recorder(store).write(
        record, progress=progress, save_progress=lambda p: resumed_saves.append(list(p["done"])))
    assert outcome.run_id == progress["run_id"] and outcome.problems == ()
    # The values part was not written again; the parts after it were, once each.
    assert resumed_saves == [["values", "artifacts"], ["values", "artifacts", "dataset-0"],
                             ["values", "artifacts", "dataset-0", "finish"]]
    assert [r.info.run_id for r in runs_of(client, "exp")] == [progress["run_id"]]
    run = client.get_run(outcome.run_id)
    assert run.info.status == FINISHED
    assert len(client.get_metric_history(outcome.run_id, "loss")) == 3
    assert len(run.inputs.dataset_inputs) == 1


def test_a_run_opened_before_the_cell_keeps_the_cells_own_logged_params(store, client):
    import mlflow

    recorder = Recorder(store)
    run_id = recorder.open_run("exp", "own", 1_700_000_000_000, tags={"nbtrack.cell": "c9"})
    try:
        assert mlflow.active_run().info.run_id == run_id
        mlflow.log_param("C", "5")  # the cell's own call, with another value than nbtrack's
    finally:
        mlflow.end_run()
    outcome = recorder.write(a_record(run_id=run_id))
    assert outcome.run_id == run_id and outcome.problems == ()
    run = client.get_run(run_id)
    assert run.data.params == {"C": "5", "model": "logreg"}
    assert run.info.status == FINISHED and run.data.tags["nbtrack.cell"] == "c1"


def test_an_unreachable_store_is_a_retry_not_an_error(tmp_path):
    (tmp_path / "a-file").write_text("")  # a store whose folder is a file: SQLite cannot open it
    unreachable = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    outcome = Recorder(unreachable).write(a_record())
    assert outcome.retry and outcome.run_id is None
    assert outcome.problems[0].startswith("run 'fit #3' not recorded yet: the MLflow store at")


def test_a_deleted_experiment_is_named_with_the_way_out(store, client):
    client.delete_experiment(client.create_experiment("gone"))
    outcome = Recorder(store).write(a_record(experiment="gone"))
    assert outcome.run_id is None and outcome.retry
    assert "experiment 'gone' is deleted; restore it with `mlflow experiments restore" in (
        outcome.problems[0])


def test_store_refused_tells_a_store_that_is_down_from_a_value_it_refuses():
    assert store_refused(sqlite3.OperationalError("database is locked"))
    assert store_refused(ConnectionError("refused"))
    assert store_refused(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise TimeoutError("slow")
        except TimeoutError as cause:
            raise RuntimeError("wrapped") from cause
    except RuntimeError as wrapped:
        assert store_refused(wrapped)
    assert store_refused(MlflowException("x", error_code=TEMPORARILY_UNAVAILABLE))
    assert store_refused(MlflowException("API request failed: Max retries exceeded"))
    assert not store_refused(MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE))
    assert not store_refused(ValueError("nope"))
    assert not store_refused(OSError(errno.ENOENT, "missing"))


def test_record_killed_makes_a_killed_run_with_source_reason_and_series(store, client):
    recorder = Recorder(store)
    made = []
    facts = {"experiment": "exp", "run_name": "died", "start_time_ms": 1_700_000_000_000,
             "source": "train()", "tags": {"nbtrack.cell": "c2"}}
    run_id = recorder.record_killed(facts, "the kernel died", [series("loss", [3, 2])],
                                    on_created=made.append)
    assert made == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.info.run_name == "died"
    assert run.data.tags["nbtrack.killed_reason"] == "the kernel died"
    assert run.data.tags["nbtrack.cell"] == "c2"
    assert len(client.get_metric_history(run_id, "loss")) == 2
    assert Path(client.download_artifacts(run_id, "cell/source.py")).read_text() == "train()"


def test_record_killed_leaves_a_run_its_record_already_ended(store, client):
    recorder = Recorder(store)
    outcome = recorder.write(a_record())
    assert recorder.record_killed({"run_id": outcome.run_id}, "late") == outcome.run_id
    run = client.get_run(outcome.run_id)
    assert run.info.status == FINISHED and "nbtrack.killed_reason" not in run.data.tags


def test_end_running_runs_of_an_execution(store, client):
    recorder = Recorder(store)
    running = recorder.client.create_run(recorder.experiment_id("exp"),
                                         tags={"nbtrack.execution": "ex1"}).info.run_id
    done = recorder.write(a_record(tags={"nbtrack.execution": "ex1"})).run_id
    other = recorder.client.create_run(recorder.experiment_id("exp"),
                                       tags={"nbtrack.execution": "ex2"}).info.run_id
    assert recorder.end_running_runs("exp", "ex1", "kernel died") == 1
    assert client.get_run(running).info.status == "KILLED"
    assert client.get_run(running).data.tags["nbtrack.killed_reason"] == "kernel died"
    assert client.get_run(done).info.status == FINISHED
    assert client.get_run(other).info.status == "RUNNING"


def test_a_fitted_estimator_is_logged_loadable_and_registered(store, client):
    import mlflow
    from sklearn.linear_model import LogisticRegression

    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])
    y = np.array([0, 1, 0, 1])
    clf = LogisticRegression().fit(X, y)
    record = a_record(models=(ModelCapture("clf", clf, X[:2]),), register_as="toy")
    outcome = Recorder(store).write(record)
    assert outcome.problems == () and outcome.registered == "toy v1"
    loaded = mlflow.sklearn.load_model(outcome.model_uris["clf"])
    assert list(loaded.predict(X)) == list(clf.predict(X))
    version = client.get_model_version("toy", "1")
    assert version.run_id == outcome.run_id


def test_register_without_a_model_is_a_problem_and_the_run_still_ends(store, client):
    outcome = Recorder(store).write(a_record(register_as="toy"))
    assert outcome.registered is None
    assert outcome.problems == ("--register toy: the cell bound no trained model "
                                "that could be logged; nothing was registered.",)
    assert client.get_run(outcome.run_id).info.status == FINISHED


def test_artifacts_the_store_cannot_take_yet_are_a_retry_that_resumes(store, client, tmp_path):
    # A real refusal: the experiment's artifact folder lies under a file, for now.
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    client.create_experiment("exp", artifact_location=str(blocked / "artifacts"))
    recorder, progress = Recorder(store), {}
    outcome = recorder.write(a_record(), progress=progress)
    assert outcome.retry and outcome.run_id == progress["run_id"]
    assert outcome.problems[0].startswith("artifacts of run 'fit #3' not written yet:")
    assert progress["done"] == ["values"]
    assert client.get_run(outcome.run_id).info.status == "RUNNING"  # not ended while incomplete

    blocked.unlink()
    blocked.mkdir()
    again = recorder.write(a_record(), progress=progress)
    assert again.run_id == outcome.run_id and not again.retry and again.problems == ()
    assert client.get_run(outcome.run_id).info.status == FINISHED
    assert [a.path for a in client.list_artifacts(outcome.run_id, "cell")] == ["cell/source.py"]
    assert len(runs_of(client, "exp")) == 1
