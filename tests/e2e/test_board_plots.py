"""The board's pictures (scatter, parallel coordinates, curves) on runs made with MlflowClient in a
real SQLite store: in the widget, in its static HTML and in ``nbtrack runs --html``."""

from __future__ import annotations

import base64
import re
from html import unescape

import pytest
from conftest import nbtrack_cli

EVIL = "<script>alert(1)</script>"
IMG = re.compile(r'<img class="nbtrack-plot nbtrack-plot-(\w+)" alt="([^"]*)" '
                 r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)">')


def pictures(html: str) -> dict[str, tuple[str, str]]:
    """The board's pictures in ``html``: ``{kind: (alt, svg)}``."""
    found = {kind: (unescape(alt), base64.b64decode(data).decode())
             for kind, alt, data in IMG.findall(html)}
    assert len(found) == len(IMG.findall(html)), "one picture of each kind"
    return found


@pytest.fixture
def runs(client):
    """Three finished runs with a loss series, a val_auc, a numeric and a text param and a
    system metric; the second (named like a script) made the version holding @champion.
    """
    experiment_id = client.create_experiment("plots")
    ids = {}
    for index, (name, c, kind) in enumerate([("small-C", "0.01", "y"), (EVIL, "1.0", "<b>x</b>"),
                                             ("large-C", "100.0", "<b>x</b>")]):
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        client.log_param(run_id, "C", c)
        client.log_param(run_id, "kind", kind)
        client.log_param(run_id, "seed", "0")  # the same everywhere: not on the board
        for step in range(4):
            client.log_metric(run_id, "loss", 1 / (step + 1 + index), step=step)
            client.log_metric(run_id, "system/cpu_utilization_percentage", 50.0 + step, step=step)
        client.log_metric(run_id, "val_auc", 0.5 + 0.1 * index)
        client.set_terminated(run_id)
        ids[name] = run_id
    client.create_registered_model("clf")
    version = client.create_model_version("clf", f"runs:/{ids[EVIL]}/model", run_id=ids[EVIL])
    client.set_registered_model_alias("clf", "champion", version.version)
    return ids


@pytest.fixture
def board(runs):
    from nbtrack.board.widget import Leaderboard

    return Leaderboard(experiment="plots", metric="val_auc")


def test_static_html_holds_scatter_parallel_and_curves(board):
    bundle = board._repr_mimebundle_()
    for html in (bundle["text/html"], board.static_html(), board._repr_html_()):
        assert "<table" in html
        assert set(pictures(html)) == {"scatter", "parallel", "curves"}
    found = pictures(board.static_html())
    alt, svg = found["parallel"]
    assert alt.startswith("3 runs across C and val_auc")
    assert svg.count('class="nbtrack-line') == 3
    assert ">C (log)<" in svg and ">val_auc<" in svg and ">kind<" not in svg  # numeric params only


def test_scatter_marks_the_champion_run(board, runs, client):
    alt, svg = pictures(board.static_html())["scatter"]
    assert alt == f"val_auc against C for 3 runs; @champion: {EVIL}"
    assert svg.count('class="nbtrack-point"') == 3
    assert svg.count('<g class="nbtrack-champion">') == 1
    champion = svg[svg.index('<g class="nbtrack-champion">'):]
    assert "★ @champion: &lt;script&gt;alert(1)&lt;…" in champion

    version = client.create_model_version("clf", f"runs:/{runs['large-C']}/model",
                                          run_id=runs["large-C"])
    board.set_alias("champion", version=("clf", version.version))
    alt, _ = pictures(board.static_html())["scatter"]
    assert alt.endswith("@champion: large-C")


def test_curves_overlay_the_selected_runs_series_read_once(board, runs):
    alt, svg = pictures(board.plots.value)["curves"]  # nothing selected: the top runs
    assert alt.startswith("curves of the top 3 runs")
    reads = board._history.reads
    assert reads == 6  # loss and val_auc of three runs

    board.select(runs["small-C"], runs["large-C"])
    alt, svg = pictures(board.plots.value)["curves"]
    assert alt == "curves of the selected runs: loss of large-C, small-C"
    assert svg.count('<polyline class="nbtrack-curve"') == 2
    assert "<title>small-C</title>" in svg and "<title>large-C</title>" in svg
    assert "&lt;script&gt;" not in svg  # not selected, not drawn
    line = re.search(r'points="([^"]+)"><title>small-C</title>', svg).group(1)
    assert len(line.split()) == 4  # its four logged steps
    assert "system/" not in svg

    board.refresh()
    board.select(runs[EVIL])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pictures(board.plots.value)["curves"][1]
    assert board._history.reads == reads  # each (run, key) read from the store once


def test_system_metrics_are_not_plotted_as_the_ranked_metric(runs):
    from nbtrack.board import plots
    from nbtrack.store import query

    # search_runs lists system metrics too; the pictures still leave them out.
    table = query.rank(query.runs("plots"), metric="system/cpu_utilization_percentage")
    html = plots.board_plots(table, "system/cpu_utilization_percentage",
                             history=plots.HistoryCache())
    found = pictures(html)
    for kind in ("scatter", "parallel"):
        assert "no model metric ranks this board" in found[kind][1]
    assert found["curves"][0].endswith(f"loss of large-C, {EVIL}, small-C")
    assert "system/" not in found["curves"][1]


def test_user_strings_are_escaped_in_the_pictures(board):
    board.param_choice.value = "kind"
    for html in (board.static_html(), board.plots.value):
        assert "<script>" not in html
        found = pictures(html)
        for _, svg in found.values():
            assert "<script>" not in svg and "<b>" not in svg
        svg = found["scatter"][1]
        assert "val_auc by kind" in svg
        assert ">&lt;b&gt;x&lt;/b&gt;<" in svg  # the param value, as a category label
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    assert f"@champion: {EVIL.replace('<', '&lt;').replace('>', '&gt;')}" in board.static_html()


def widgets_in(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from widgets_in(child)


def test_widget_shows_the_plots_beside_the_table_and_the_param_is_chosen(board):
    tree = list(widgets_in(board))
    (view,) = [w for w in tree if "nbtrack-plots" in w._dom_classes]
    (table,) = [w for w in tree if "nbtrack-table" in w._dom_classes]
    (row,) = [w for w in tree if table in getattr(w, "children", ())]
    assert any(view in getattr(c, "children", ()) for c in row.children)  # beside the table
    assert set(pictures(view.value)) == {"scatter", "parallel", "curves"}
    assert board.param_choice.options == ("C", "kind") and board.param_choice.value == "C"
    board.param_choice.value = "kind"
    assert pictures(view.value)["scatter"][0].startswith("val_auc against kind")


def test_runs_html_writes_a_page_with_the_pictures(runs, tmp_path):
    out = tmp_path / "board.html"
    done = nbtrack_cli("runs", "-e", "plots", "-m", "val_auc", "--html", str(out),
                       cwd=tmp_path, check=True)
    assert "ranked by val_auc" in done.stdout and f"wrote {out}" in done.stderr
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    found = pictures(page)
    assert set(found) == {"scatter", "parallel", "curves"}
    assert found["scatter"][0].endswith(f"@champion: {EVIL}")
    assert found["curves"][0].startswith("curves of the top 3 runs: loss of ")

    nbtrack_cli("runs", "-e", "plots", "-m", "val_auc", "--html", str(out), "--param", "kind",
                cwd=tmp_path, check=True)
    assert pictures(out.read_text())["scatter"][0].startswith("val_auc against kind")
    done = nbtrack_cli("runs", "-e", "plots", "--html", str(out), "--param", "nope", cwd=tmp_path)
    assert done.returncode == 2 and "no param 'nope' differs" in done.stderr
    assert done.stdout == ""
    assert "--html FILE" in nbtrack_cli("runs", "--help", cwd=tmp_path, check=True).stdout
