"""Registered models (nbtrack/store/registry.py): versions from logged models, aliases and who moved
them, and the run behind any reference, on a real SQLite store."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from nbtrack.errors import NbtrackError
from nbtrack.record import FINISHED, CellRecord, ModelCapture
from nbtrack.store import registry
from nbtrack.store.recorder import Recorder

X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])
Y = np.array([0, 1, 0, 1])


def fit_run(store, name: str, c: float):
    """A run that logged one fitted estimator; returns (run id, model uri)."""
    clf = LogisticRegression(C=c).fit(X, Y)
    outcome = Recorder(store).write(CellRecord(
        experiment="exp", run_name=name, start_time_ms=1_000, end_time_ms=2_000, status=FINISHED,
        models=(ModelCapture("clf", clf, X[:2]),)))
    assert outcome.problems == ()
    return outcome.run_id, outcome.model_uris["clf"]


@pytest.fixture
def two_versions(store):
    first_run, first_uri = fit_run(store, "first", 0.1)
    second_run, second_uri = fit_run(store, "second", 10.0)
    one = registry.register(first_uri, "clf", run_id=first_run, tracking_uri=store)
    two = registry.register(second_uri, "clf", run_id=second_run, tracking_uri=store)
    return {"runs": (first_run, second_run), "uris": (first_uri, second_uri),
            "versions": (one, two)}


def test_register_makes_the_model_then_numbered_versions(two_versions, client):
    one, two = two_versions["versions"]
    assert (str(one.version), str(two.version)) == ("1", "2")
    assert client.get_model_version("clf", "2").run_id == two_versions["runs"][1]
    assert client.get_model_version("clf", "1").source == two_versions["uris"][0]


def test_set_alias_moves_it_and_records_who_where_and_the_previous_holder(two_versions, store):
    assert registry.alias_holder("clf", "champion", tracking_uri=store) is None
    assert registry.set_alias("clf", "champion", 1, "ana", "train.ipynb", tracking_uri=store) is None
    previous = registry.set_alias("clf", "champion", 2, "bo", None, tracking_uri=store)
    assert str(previous.version) == "1"
    assert str(registry.alias_holder("clf", "champion", tracking_uri=store).version) == "2"
    tags = registry.get_version("clf", 2, tracking_uri=store).tags
    assert tags["nbtrack.alias.champion.moved_by"] == "bo"
    assert tags["nbtrack.alias.champion.previous"] == "1"
    assert tags["nbtrack.alias.champion.notebook"] == ""
    assert tags["nbtrack.alias.champion.moved_at"].endswith("+00:00")


def test_versions_of_runs_list_each_runs_versions_and_aliases(two_versions, store):
    registry.set_alias("clf", "champion", 2, "ana", None, tracking_uri=store)
    first, second = two_versions["runs"]
    found = registry.versions_of_runs([first, second, "0" * 32], tracking_uri=store)
    assert found[first] == [registry.VersionRef("clf", "1", first, ())]
    assert found[second] == [registry.VersionRef("clf", "2", second, ("champion",))]
    assert found["0" * 32] == []


def test_run_of_resolves_every_kind_of_reference(two_versions, store):
    first, second = two_versions["runs"]
    registry.set_alias("clf", "champion", 2, "ana", None, tracking_uri=store)
    assert registry.run_of(first, tracking_uri=store) == first
    assert registry.run_of(f"runs:/{first}/clf", tracking_uri=store) == first
    assert registry.run_of("models:/clf@champion", tracking_uri=store) == second
    assert registry.run_of("models:/clf/1", tracking_uri=store) == first
    assert registry.run_of(two_versions["uris"][1], tracking_uri=store) == second


def test_run_of_names_what_it_could_not_find(two_versions, store):
    with pytest.raises(NbtrackError, match="'models:/clf@nobody' not found in sqlite:///"):
        registry.run_of("models:/clf@nobody", tracking_uri=store)
    with pytest.raises(NbtrackError, match="names no version: use models:/clf@champion"):
        registry.run_of("models:/clf", tracking_uri=store)
    with pytest.raises(NbtrackError, match="names no run"):
        registry.run_of("runs:/", tracking_uri=store)


def test_load_model_from_a_run_or_a_version_gives_the_estimator(two_versions, store, client):
    first, _ = two_versions["runs"]
    from_run = registry.load_model(first, tracking_uri=store)
    from_version = registry.load_model("models:/clf/1", tracking_uri=store)
    assert isinstance(from_run, LogisticRegression) and from_run.C == 0.1
    assert list(from_version.predict(X)) == list(from_run.predict(X))
    experiment_id = client.get_run(first).info.experiment_id
    assert [m.name for m in registry.logged_models(first, experiment_id, tracking_uri=store)] == [
        "clf"]
    with pytest.raises(NbtrackError, match="no run with id 'nope'"):
        registry.load_model("nope", tracking_uri=store)
