"""The leaderboard widget driven through its own methods and ipywidgets' Button.click(), on runs
made by %%track in a real shell and a real SQLite store."""

from __future__ import annotations

import subprocess
import sys

import pytest

SETUP = """
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True, as_frame=True)
"""


def track_models(shell, cs=(0.01, 1.0, 100.0), experiment="board"):
    shell.ok(SETUP)
    for c in cs:
        shell.ok(f"%%track -e {experiment} -n logreg-C{c}\nC = {c}\n"
                 "clf = LogisticRegression(C=C, max_iter=1000).fit(X, y)\n"
                 "val_acc = clf.score(X, y)\nloss = float(1 - val_acc)")


@pytest.fixture
def board(shell):
    track_models(shell)
    return shell.ip.run_line_magic("track_board", "-e board -m val_acc")


def test_board_ranks_runs_and_shows_only_differing_params(board):
    runs = board.runs
    assert list(runs["rank"]) == [1, 2, 3]
    assert list(runs["val_acc"]) == sorted(runs["val_acc"], reverse=True)
    assert list(runs["run"])[-1] == "logreg-C0.01"
    assert "params.C" in runs and "params.clf.C" in runs
    assert "params.clf.max_iter" not in runs  # the same in every run: noise
    for column in ("run", "notebook", "start_time", "status", "val_acc", "loss", "models"):
        assert column in runs


def test_metric_dropdown_sort_toggle_and_filter(board):
    board.metric_choice.value = "loss"
    assert board.metric == "loss"
    assert list(board.runs["loss"]) == sorted(board.runs["loss"], reverse=True)
    board.ascending_toggle.value = True
    assert list(board.runs["loss"]) == sorted(board.runs["loss"])
    board.filter_box.value = "params.C = '100.0'"
    assert list(board.runs["run"]) == ["logreg-C100.0"]
    board.filter_box.value = "params.C = = oops"
    assert "Could not read the runs" in board.message.value
    assert list(board.runs["run"]) == ["logreg-C100.0"]  # the last good table stays
    board.filter_box.value = ""
    assert len(board.runs) == 3


def test_top_option_and_asc_magic(shell):
    track_models(shell)
    board = shell.ip.run_line_magic("track_board", "-e board -m loss --asc --top 2")
    assert len(board.runs) == 2
    assert list(board.runs["loss"]) == sorted(board.runs["loss"])


def test_register_button_creates_a_version_and_says_which(board, client):
    best = board.runs["run_id"][0]
    board.select(best)
    board.model_name.value = "iris-clf"
    board.register_button.click()
    assert "iris-clf v1" in board.message.value
    version = client.get_model_version("iris-clf", "1")
    assert version.run_id == best
    assert board.runs["models"][0] == ["iris-clf v1"]
    assert board.version_choice.value == ("iris-clf", "1")


def test_register_default_name_is_the_experiment_and_api_returns_the_version(board):
    board.select(board.runs["run_id"][1])
    version = board.register()
    assert version.name == "board" and str(version.version) == "1"


def test_run_without_model_gets_a_clear_message_and_nothing_changes(shell, client):
    shell.ok("%%track -e board -n no-model\nscore = float(3)")
    board = shell.ip.run_line_magic("track_board", "-e board")
    board.select(board.runs["run_id"][0])
    assert board.register("iris-clf") is None
    assert "has no logged model: nothing was registered" in board.message.value
    assert client.search_registered_models() == []


def test_set_champion_moves_the_alias_records_the_move_and_asks_before_taking_it(board, client):
    first, second = board.runs["run_id"][0], board.runs["run_id"][1]
    board.select(first)
    board.register("iris-clf")
    board.set_alias_button.click()  # nothing holds it: moves at once
    assert client.get_model_version_by_alias("iris-clf", "champion").version == 1
    assert "nothing held it" in board.message.value
    assert board.runs["models"][0] == ["iris-clf v1 @champion"]
    assert "nbtrack-champion" in board.table.value and "\u2605" in board.table.value

    board.select(second)
    board.register("iris-clf")
    assert "candidate: iris-clf v2" in board.candidate.value
    assert "current @champion: iris-clf v1" in board.candidate.value
    board.set_alias_button.click()  # v1 holds it: ask first
    assert client.get_model_version_by_alias("iris-clf", "champion").version == 1
    assert board.confirm_button.layout.display != "none"
    assert "Confirm" in board.message.value
    board.confirm_button.click()
    holder = client.get_model_version_by_alias("iris-clf", "champion")
    assert holder.version == 2 and "(was v1)" in board.message.value
    tags = holder.tags
    assert tags["nbtrack.alias.champion.previous"] == "1"
    assert tags["nbtrack.alias.champion.moved_by"]
    assert tags["nbtrack.alias.champion.moved_at"].startswith("20")
    assert "nbtrack.alias.champion.notebook" in tags


def test_candidate_evaluated_on_different_data_is_said_plainly(shell, client):
    shell.ok(SETUP)
    shell.ok("%%track -e board -n full\nclf = LogisticRegression(max_iter=1000).fit(X, y)\n"
             "val_acc = clf.score(X, y)")
    shell.ok("X = X.head(100)\ny = y.head(100)")
    shell.ok("%%track -e board -n sample\nclf = LogisticRegression(max_iter=1000).fit(X, y)\n"
             "val_acc = clf.score(X, y)")
    board = shell.ip.run_line_magic("track_board", "-e board -m val_acc")
    by_name = dict(zip(board.runs["run"], board.runs["run_id"], strict=True))
    board.select(by_name["full"])
    board.register("iris")
    board.set_alias("champion")
    board.select(by_name["sample"])
    board.register("iris")
    assert "evaluated on different data" in board.candidate.value
    assert "X (" in board.candidate.value


def test_alias_is_editable_and_version_can_be_given(board, client):
    board.select(board.runs["run_id"][0])
    board.register("iris-clf")
    board.alias.value = "staging"
    board.set_alias_button.click()
    assert client.get_model_version_by_alias("iris-clf", "staging").version == 1
    board.set_alias("challenger", version=1)
    assert client.get_model_version_by_alias("iris-clf", "challenger").version == 1


def test_champion_loads_in_a_separate_process(board, store):
    board.select(board.runs["run_id"][0])
    board.register("iris-clf")
    board.set_alias("champion")
    code = ("import mlflow, sklearn.datasets as d\n"
            "X, _ = d.load_iris(return_X_y=True, as_frame=True)\n"
            "m = mlflow.pyfunc.load_model('models:/iris-clf@champion')\n"
            "print(len(m.predict(X.head(4))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "MLFLOW_TRACKING_URI": store},
                         check=True)
    assert out.stdout.strip().endswith("4")


def test_compare_shows_params_metrics_diffs_histories_and_figures(shell):
    shell.ok("import nbtrack\nimport matplotlib.pyplot as plt")
    for lr in (0.1, 0.2):
        shell.ok(f"%%track -e cmp -n lr{lr}\nlr = {lr}\nbatch = 32\n"
                 "for step in range(3):\n    nbtrack.log_metric('loss', lr * step, step=step)\n"
                 "final = lr * 10\nfig = plt.figure()\nfig.gca().plot([1, lr])\n")
    board = shell.ip.run_line_magic("track_board", "-e cmp -m final")
    board.select(*board.runs["run_id"])
    html = board.comparison.value
    assert "param lr" in html and "metric final" in html
    lr_row = html[html.index("param lr"):].split("</tr>")[0]
    batch_row = html[html.index("param batch"):].split("</tr>")[0]
    assert "nbtrack-diff" in lr_row and "nbtrack-diff" not in batch_row
    assert html.count("<img") == 2  # one logged figure per run
    assert "curves of the selected runs: loss of lr0.2, lr0.1" in board.plots.value


def test_board_refreshes_itself_after_each_tracked_cell(board, shell):
    assert len(board.runs) == 3
    shell.ok("%%track -e board -n later\nval_acc = float(0.5)")
    import nbtrack

    nbtrack.flush()  # the board redraws once the background writer has stored the run
    assert len(board.runs) == 4 and "later" in list(board.runs["run"])


def test_static_html_and_text_travel_with_the_widget_view(board):
    bundle = board._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "<table" in bundle["text/html"] and "logreg-C100.0" in bundle["text/html"]
    text = bundle["text/plain"]
    lines = text.splitlines()
    assert lines[0].startswith("experiment 'board', ranked by val_acc")
    assert lines[1].split()[:2] == ["rank", "run"]
    assert [line.split()[1] for line in lines[2:]] == list(board.runs["run"])


def test_user_strings_are_escaped_everywhere(shell):
    evil = "<img src=x onerror=alert(1)>"
    shell.ok(SETUP)
    shell.ok(f"%%track -e esc -n '{evil}' -t note='{evil}'\nlabel = '{evil}'\n"
             "clf = LogisticRegression(max_iter=1000).fit(X, y)\nscore = clf.score(X, y)")
    shell.ok("%%track -e esc -n other\nlabel = 'plain'\nscore = float(0.1)")
    board = shell.ip.run_line_magic("track_board", "-e esc -m score")
    board.select(*board.runs["run_id"])
    board.select(board.runs["run_id"][0])
    board.register(evil.replace("<", "").replace(">", "").replace(" ", "-").replace("=", "-"))
    for html in (board.table.value, board.static_html(), board.comparison.value,
                 board.message.value, board.candidate.value):
        assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in board.table.value
    board.select(*board.runs["run_id"])
    assert "&lt;img src=x onerror=alert(1)&gt;" in board.comparison.value
    assert "<img src=x" not in board.comparison.value


def test_nbtrack_leaderboard_api_and_empty_experiment(shell):
    import nbtrack

    board = nbtrack.leaderboard(experiment="nothing-here")
    assert len(board.runs) == 0
    assert "no runs yet" in board.static_html()
    shell.ok("%%track -e nothing-here\nscore = float(2)")
    nbtrack.flush()  # the board redraws once the background writer has stored the run
    assert len(board.runs) == 1
    board.refresh()
    assert list(board.runs["score"]) == [2.0]
