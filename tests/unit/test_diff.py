"""Why two runs differ (nbtrack/diff.py), on RunFacts built by hand."""

from __future__ import annotations

from nbtrack import diff
from nbtrack.diff import Change
from nbtrack.record import DatasetRef, RunFacts


def facts(run_id: str, name: str, **fields) -> RunFacts:
    values = dict(experiment="exp", status="FINISHED", params={"C": "0.1", "seed": "1"},
                  metrics={"auc": 0.81}, source="C = 0.1\nfit()\n",
                  tags={"mlflow.source.git.commit": "aaa", "nbtrack.git.dirty": "false",
                        "nbtrack.version.numpy": "2.0.0", "nbtrack.notebook": "/w/train.ipynb"},
                  datasets=(DatasetRef("X", "d1", "read"),))
    values.update(fields)
    return RunFacts(run_id=run_id, name=name, **values)


A = facts("a" * 32, "low")


def test_a_run_compared_with_itself_has_no_differences():
    same = diff.compare(A, A)
    assert same.same and same.source == ""
    assert diff.text(same).endswith("no differences: same params, metrics, source, data, "
                                    "packages and commit")


def test_compare_names_every_section_that_differs():
    b = facts("b" * 32, "high", params={"C": "1.0", "seed": "1", "tol": "0.01"},
              metrics={"auc": 0.9}, source="C = 1.0\nfit()\n",
              tags={"mlflow.source.git.commit": "bbb", "nbtrack.git.dirty": "true",
                    "nbtrack.version.numpy": "2.1.0", "nbtrack.notebook": "<ipython>"},
              datasets=(DatasetRef("X", "d2", "read"),))
    found = diff.compare(A, b)
    assert not found.same
    assert (found.a, found.b) == ("'low' (aaaaaaaa)", "'high' (bbbbbbbb)")
    assert found.params == (Change("C", "0.1", "1.0"), Change("tol", None, "0.01"))
    assert found.metrics == (Change("auc", 0.81, 0.9),)
    assert found.datasets == (Change("X", "d1", "d2"),)
    assert found.versions == (Change("numpy", "2.0.0", "2.1.0"),)
    assert found.git == (Change("commit", "aaa", "bbb"), Change("dirty", "false", "true"))
    assert found.notebooks == (Change("path", "/w/train.ipynb", None),)
    assert "-C = 0.1\n+C = 1.0\n" in found.source
    assert "'low' (aaaaaaaa) cell/source.py" in found.source


def test_text_lists_changes_aligned_with_absent_values_as_a_dash():
    b = facts("b" * 32, "high", params={"C": "1.0", "seed": "1", "tolerance": "0.01"},
              metrics={"auc": 0.1 + 0.2})
    lines = diff.text(diff.compare(A, b)).splitlines()
    assert lines[:2] == ["a: 'low' (aaaaaaaa)", "b: 'high' (bbbbbbbb)"]
    assert "params:" in lines
    assert "  C          0.1  ->  1.0" in lines
    assert "  tolerance  -  ->  0.01" in lines
    assert "  auc  0.81  ->  0.30000000000000004" in lines  # full precision
    assert "cell source:" not in lines


def test_source_diff_of_equal_or_missing_sources():
    assert diff.source_diff("x = 1\n", "x = 1\n") == ""
    assert diff.source_diff(None, "x = 1") == "--- a\n+++ b\n@@ -0,0 +1 @@\n+x = 1\n"


def test_changes_sorts_keys_and_keeps_only_differences():
    assert diff.changes({"b": 1, "a": 2, "c": 3}, {"a": 2, "b": 5, "d": 4}) == (
        Change("b", 1, 5), Change("c", 3, None), Change("d", None, 4))
