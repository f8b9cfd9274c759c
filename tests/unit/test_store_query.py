"""Reading runs back (nbtrack/store/query.py): runs, rank, run_facts, on a real SQLite store."""

from __future__ import annotations

import pandas as pd
import pytest

from nbtrack.errors import NbtrackError
from nbtrack.record import FAILED, FINISHED, Artifact, CellRecord, DataCapture, Series
from nbtrack.store import query
from nbtrack.store.recorder import Recorder


def write(store, name: str, start: int, params=None, metrics=None, **fields) -> str:
    record = CellRecord(experiment=fields.pop("experiment", "exp"), run_name=name,
                        start_time_ms=start, end_time_ms=start + 1,
                        status=fields.pop("status", FINISHED), params=params or {},
                        metrics=metrics or {}, tags={"mlflow.runName": name,
                                                     "nbtrack.notebook": "nb.ipynb",
                                                     **fields.pop("tags", {})}, **fields)
    outcome = Recorder(store).write(record)
    assert outcome.problems == ()
    return outcome.run_id


@pytest.fixture
def three_runs(store):
    ids = [
        write(store, "low", 1_000, {"C": "0.1", "seed": "1"}, {"auc": 0.7, "loss": 0.5}),
        write(store, "high", 2_000, {"C": "1.0", "seed": "1"}, {"auc": 0.9}),
        write(store, "broken", 3_000, {"C": "10", "seed": "1"}, {}, status=FAILED),
    ]
    return ids


def test_runs_is_search_runs_of_the_experiment(three_runs, store):
    table = query.runs("exp", tracking_uri=store)
    assert sorted(table["tags.mlflow.runName"]) == ["broken", "high", "low"]
    only = query.runs("exp", filter="metrics.auc > 0.8", tracking_uri=store)
    assert list(only["run_id"]) == [three_runs[1]]


def test_runs_of_a_missing_experiment_or_with_a_bad_filter_are_readable_errors(three_runs, store):
    with pytest.raises(NbtrackError, match="no experiment named 'nope' in sqlite:///"):
        query.runs("nope", tracking_uri=store)
    assert query.runs("nope", tracking_uri=store, missing_ok=True).empty
    with pytest.raises(NbtrackError, match="filter 'metrics.auc >>> 1' not understood"):
        query.runs("exp", filter="metrics.auc >>> 1", tracking_uri=store)


def test_runs_with_a_tracking_uri_leaves_mlflows_own_uri_as_it_was(three_runs, store, tmp_path,
                                                                  monkeypatch):
    import mlflow

    query.runs("exp", tracking_uri=store)
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    assert mlflow.get_tracking_uri() == elsewhere


def test_leaderboard_ranks_the_experiments_runs(three_runs, store):
    board = query.leaderboard("exp", metric="auc", tracking_uri=store)
    assert list(board["run"]) == ["high", "low", "broken"]
    assert list(board["rank"]) == [1, 2, 3]
    assert board.attrs["metric"] == "auc"


def table(rows):
    return pd.DataFrame(rows)


RUNS = table([
    {"run_id": "r1", "tags.mlflow.runName": "a", "status": "FINISHED", "metrics.auc": 0.7,
     "metrics.loss": 0.3, "params.C": "0.1", "params.seed": "1", "params.solver": None},
    {"run_id": "r2", "tags.mlflow.runName": "b", "status": "FINISHED", "metrics.auc": 0.9,
     "metrics.loss": None, "params.C": "1.0", "params.seed": "1", "params.solver": "lbfgs"},
    {"run_id": "r3", "tags.mlflow.runName": "c", "status": "FAILED", "metrics.auc": None,
     "metrics.loss": 0.1, "params.C": "10", "params.seed": "1", "params.solver": None},
    {"run_id": "r4", "tags.mlflow.runName": "d", "status": "FINISHED", "metrics.auc": 0.8,
     "metrics.loss": 0.2, "params.C": "0.1", "params.seed": "1", "params.solver": None},
])


def test_rank_sorts_by_the_metric_runs_without_it_last():
    board = query.rank(RUNS, metric="auc")
    assert list(board["run_id"]) == ["r2", "r4", "r1", "r3"]
    assert list(board.columns[:7]) == ["rank", "run", "status", "start_time", "notebook", "user",
                                      "auc"]
    assert list(query.rank(RUNS, metric="loss", ascending=True)["run_id"]) == ["r3", "r4", "r1",
                                                                              "r2"]


def test_rank_without_a_metric_picks_the_one_most_runs_have():
    assert query.rank(RUNS).attrs["metric"] == "auc"  # 3 runs each: the first by name


def test_rank_shows_only_params_that_differ_between_runs():
    board = query.rank(RUNS, metric="auc")
    assert "params.C" in board.columns and "params.seed" not in board.columns
    assert "params.solver" not in board.columns  # one value among the runs that have it


def test_rank_top_and_an_unknown_metric():
    assert list(query.rank(RUNS, metric="auc", top=2)["rank"]) == [1, 2]
    with pytest.raises(NbtrackError, match="no run has a metric 'f1'; metrics here: auc, loss"):
        query.rank(RUNS, metric="f1")
    empty = query.rank(pd.DataFrame(), metric="auc")
    assert empty.empty and empty.attrs["metric"] == "auc"


def test_run_facts_gather_what_a_diff_or_a_reproduction_needs(store):
    loss = Series("loss")
    loss.add(0.4, 1, 1_000)
    loss.add(0.9, 0, 1_000)
    run_id = write(
        store, "fit", 1_000, {"C": "0.1"}, {"auc": 0.8}, series=(loss,),
        tags={"mlflow.source.git.commit": "abc123", "nbtrack.version.numpy": "2.0.0",
              "nbtrack.notebook": "/w/train.ipynb"},
        artifacts=(Artifact("cell/source.py", b"C = 0.1\n"),
                   Artifact("lineage/history.py", b"# In[1]:\nC = 0.1\n"),
                   Artifact("lineage/train.ipynb", b'{"cells": []}')),
        datasets=(DataCapture("X", pd.DataFrame({"a": [1, 2]}), "read"),))
    facts = query.run_facts(run_id, tracking_uri=store)
    assert (facts.run_id, facts.name, facts.experiment, facts.status) == (
        run_id, "fit", "exp", FINISHED)
    assert facts.params == {"C": "0.1"} and facts.metrics == {"auc": 0.8, "loss": 0.4}
    assert facts.source == "C = 0.1\n" and facts.history == "# In[1]:\nC = 0.1\n"
    assert facts.notebook == b'{"cells": []}' and facts.notebook_path == "/w/train.ipynb"
    assert facts.git_commit == "abc123" and facts.versions == {"numpy": "2.0.0"}
    assert list(facts.digests) == ["X"] and facts.datasets[0].context == "read"
    assert query.metric_history(run_id, "loss", tracking_uri=store) == [(0, 0.9), (1, 0.4)]


def test_run_facts_of_a_run_without_lineage_and_of_no_run(store):
    run_id = write(store, "bare", 1_000)
    facts = query.run_facts(run_id, tracking_uri=store)
    assert facts.source is None and facts.history is None and facts.notebook is None
    with pytest.raises(NbtrackError, match="no run with id '0000' in sqlite:///"):
        query.run_facts("0000", tracking_uri=store)


def test_runs_tagged_finds_a_tags_runs_oldest_first(store):
    first = write(store, "a", 1_000, tags={"nbtrack.sweep": "s1"})
    write(store, "b", 2_000, tags={"nbtrack.sweep": "s2"})
    second = write(store, "c", 3_000, tags={"nbtrack.sweep": "s1"})
    found = query.runs_tagged("exp", "nbtrack.sweep", "s1", tracking_uri=store)
    assert [r.info.run_id for r in found] == [first, second]
    assert query.runs_tagged("nope", "nbtrack.sweep", "s1", tracking_uri=store) == []
