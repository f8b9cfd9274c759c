"""Rebuilding runs: `nbtrack reproduce`, `nbtrack diff`, `nbtrack.load` and hidden-state detection,
on real stores, real shells and real kernels."""

from __future__ import annotations

import json
import shutil

import nbformat
import pytest
from conftest import SHOWCASE, nbtrack_cli, own_metrics, write_notebook


def code_cells(path):
    return [c.source for c in nbformat.read(path, 4).cells if c.cell_type == "code"]


# -- hidden state at capture time, and reproduce in process ------------------------------------


def test_cell_run_out_of_order_is_flagged_in_summary_tag_and_reproduction(shell, tmp_path,
                                                                          monkeypatch, capsys):
    notebook = write_notebook(tmp_path / "project" / "explore.ipynb", [
        "%load_ext nbtrack", "rate = 0.5", "rate = rate * 2", "%%track -n scaled\nscaled = rate * 10",
    ])
    monkeypatch.setenv("JPY_SESSION_NAME", str(notebook))
    shell.ok("rate = 0.5")
    shell.ok("rate = rate * 2")
    shell.ok("rate = rate * 2")  # run twice: the saved notebook says 1.0, the kernel holds 2.0
    shell.ok("%%track -n scaled\nscaled = rate * 10")
    out = capsys.readouterr().out
    summary = next(line for line in out.splitlines() if line.startswith("nbtrack: run 'scaled'"))
    assert "hidden state: cells ran out of order" in summary
    run = shell.last()
    assert "out of order" in run.data.tags["nbtrack.hidden_state"]
    assert run.data.metrics["scaled"] == 20.0

    from nbtrack.cli import main

    output = tmp_path / "rebuilt.ipynb"
    assert main(["reproduce", run.info.run_id, "-o", str(output)]) == 0
    captured = capsys.readouterr()
    assert f"wrote {output}" in captured.out
    assert "hidden state: cells ran out of order" in captured.err
    cells = nbformat.read(output, 4).cells
    header = cells[0].source
    assert cells[0].cell_type == "markdown" and "explore.ipynb" in header
    assert "**Hidden state**" in header and "scaled=20.0" in header
    # What actually ran, in order, the doubling twice; the tracked cell tagged as a reproduction.
    sources = [c.source for c in cells[1:]]
    assert sources[-4:-1] == ["rate = 0.5", "rate = rate * 2", "rate = rate * 2"]
    assert sources[-1] == (f"%%track -n scaled -t nbtrack.reproduces={run.info.run_id}\n"
                           "scaled = rate * 10")


def test_name_no_saved_cell_defines_is_flagged_and_minimal_keeps_its_definition(
        shell, tmp_path, monkeypatch, capsys):
    notebook = write_notebook(tmp_path / "project" / "fit.ipynb", [
        "%load_ext nbtrack", "import math", "%%track -n fit\nloss = math.log(factor)",
    ])
    monkeypatch.setenv("JPY_SESSION_NAME", str(notebook))
    shell.ok("import math")
    shell.ok("factor = 4.0")  # typed in a scratch cell, then deleted
    shell.ok("noise = [1, 2, 3]")
    shell.ok("%%track -n fit\nloss = math.log(factor)")
    run = shell.last()
    hidden = run.data.tags["nbtrack.hidden_state"]
    assert "reads 'factor', which no cell of the saved notebook defines" in hidden
    assert "ran code that no cell of the saved notebook holds" in hidden

    from nbtrack.cli import main

    output = tmp_path / "minimal.ipynb"
    assert main(["reproduce", run.info.run_id, "-o", str(output), "--minimal"]) == 0
    assert code_cells(output) == [
        "%load_ext nbtrack", "import math", "factor = 4.0",
        f"%%track -n fit -t nbtrack.reproduces={run.info.run_id}\nloss = math.log(factor)",
    ]
    capsys.readouterr()


def test_diff_of_two_real_runs_and_the_board_shows_the_same(shell, capsys):
    shell.ok("import numpy as np\nfrom sklearn.datasets import load_iris\n"
             "from sklearn.linear_model import LogisticRegression\n"
             "X, y = load_iris(return_X_y=True)")
    shell.ok("%%track -n small-C\nC = 0.01\nclf = LogisticRegression(C=C, max_iter=500)"
             ".fit(X, y)\nacc = clf.score(X, y)")
    first = shell.last().info.run_id
    shell.ok("X = X[:100]\ny = y[:100]")
    shell.ok("%%track -n large-C\nC = 10.0\nclf = LogisticRegression(C=C, max_iter=500)"
             ".fit(X, y)\nacc = clf.score(X, y)")
    second = shell.last().info.run_id
    capsys.readouterr()

    from nbtrack.cli import main

    assert main(["diff", first, second]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"a: 'small-C' ({first[:8]})\nb: 'large-C' ({second[:8]})")
    params = out[out.index("params:"):out.index("metrics:")]
    assert "  C " in params and "0.01  ->  10.0" in params
    assert "clf.C" in params and "seed" not in params  # only what differs
    assert "acc" in out[out.index("metrics:"):]
    data = out[out.index("data digests:"):out.index("cell source:")]
    assert "X " in data and "y " in data  # 150 rows against 100
    source = out[out.index("cell source:"):]
    assert "\n-C = 0.01\n" in source and "\n+C = 10.0\n" in source
    assert "package versions:" not in out and "git:" not in out  # same kernel, no repository

    assert main(["diff", first, first]) == 0
    assert "no differences" in capsys.readouterr().out

    from nbtrack import diff
    from nbtrack.board.widget import Leaderboard
    from nbtrack.store import query

    board = Leaderboard(metric="acc")
    board.select(first, second)
    html = board.comparison.value
    expected = diff.compare(query.run_facts(first), query.run_facts(second))
    assert "What differs" in html and "\n-C = 0.01\n" in html and "\n+C = 10.0\n" in html
    for section, changes in expected.sections:
        for change in changes:
            assert f"<td>{section}</td><td>{change.key}</td>" in html


def test_unknown_run_or_model_is_one_line_and_exit_2(store, tmp_path):
    for reference in ("0123456789abcdef", "models:/nope@champion"):
        done = nbtrack_cli("reproduce", reference, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert done.stderr.startswith("nbtrack reproduce: ")
    done = nbtrack_cli("diff", "0123456789abcdef", "models:/nope/1", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("nbtrack diff: no run with id")


# -- real kernels: the showcase's champion, and data changed after the run ---------------------


@pytest.fixture
def showcase(store, tmp_path):
    folder = tmp_path / "project"
    return shutil.copy(SHOWCASE, folder / SHOWCASE.name)


def test_showcase_champion_reproduced_by_execute_with_identical_metrics(showcase, client):
    folder = showcase.parent
    done = nbtrack_cli("run", showcase.name, "-e", "showcase", "--no-progress", cwd=folder)
    assert done.returncode == 0, done.stderr
    experiment = client.get_experiment_by_name("showcase").experiment_id
    best = client.search_runs([experiment], order_by=["metrics.val_auc DESC"])[0]
    done = nbtrack_cli("promote", best.info.run_id, "--model", "showcase-clf", cwd=folder)
    assert done.returncode == 0, done.stderr

    import nbtrack as api

    model = api.load("models:/showcase-clf@champion")
    assert hasattr(model, "predict_proba")  # the estimator itself, not a pyfunc wrapper

    output = folder / "rebuilt" / "champion.ipynb"
    done = nbtrack_cli("reproduce", "models:/showcase-clf@champion", "-o", str(output), "--execute",
                   cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hidden state" not in done.stderr and "warning" not in done.stderr
    reproduced = client.search_runs(
        [experiment], filter_string=f"tags.`nbtrack.reproduces` = '{best.info.run_id}'")
    assert len(reproduced) == 1
    again = reproduced[0]
    # identical, not merely close (what the machine did meanwhile, system/..., aside)
    assert own_metrics(again.data.metrics) == own_metrics(best.data.metrics)
    assert again.data.tags["mlflow.runName"] == best.data.tags["mlflow.runName"]
    digests = {d.dataset.name: d.dataset.digest for d in best.inputs.dataset_inputs}
    assert digests == {d.dataset.name: d.dataset.digest for d in again.inputs.dataset_inputs}
    table = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.strip()}
    for key, value in own_metrics(best.data.metrics).items():
        assert table[key] == [key, repr(value), repr(value), "same"]
    assert not any(key.startswith("system/") for key in table)  # the machine's, not compared
    assert "metric(s) reproduced" in done.stdout
    # The executed reproduction holds the history up to the champion's cell, and no registering.
    sources = code_cells(output)
    assert sources[0] == "%load_ext nbtrack"
    assert sources[-1].startswith(f"%%track -n {best.data.tags['mlflow.runName']} -t "
                                  f"nbtrack.reproduces={best.info.run_id}")
    assert not any("--register" in s for s in sources)


def test_run_whose_data_changed_afterwards_is_reported(store, tmp_path, client):
    folder = tmp_path / "project"
    (folder / "data.csv").write_text("x\n1\n2\n3\n")
    notebook = write_notebook(folder / "mean.ipynb", [
        "%load_ext nbtrack",
        "import pandas as pd",
        "%%track -n mean\ndf = pd.read_csv('data.csv')\nmean_x = float(df.x.mean())",
    ])
    done = nbtrack_cli("run", notebook.name, "-e", "data", "--no-progress", cwd=folder)
    assert done.returncode == 0, done.stderr
    original = client.search_runs([client.get_experiment_by_name("data").experiment_id])[0]
    assert original.data.metrics["mean_x"] == 2.0

    (folder / "data.csv").write_text("x\n1\n2\n30\n")  # someone fixed a value in place
    done = nbtrack_cli("reproduce", original.info.run_id, "--execute", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "data changed: dataset 'df' had digest" in done.stderr
    assert "metrics differ from the original's beyond rtol" in done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("mean_x"))
    assert row.split() == ["mean_x", "2.0", "11.0", "DIFFERS"]
    # Written beside where it was asked from, run where the data is.
    assert (tmp_path / f"mean-reproduce-{original.info.run_id[:8]}.ipynb").is_file()
    json.loads((tmp_path / f"mean-reproduce-{original.info.run_id[:8]}.ipynb").read_text())


def test_hidden_state_summary_names_five_of_each_kind_and_counts_the_rest():
    from nbtrack.capture.history import EDITED, UNDEFINED, Finding, summary

    findings = [Finding(EDITED, f"In[{n}] ran code that no cell of the saved notebook holds", n)
                for n in range(1, 41)]
    findings.append(Finding(UNDEFINED, "the tracked cell reads 'x', which no cell defines"))
    text = summary(findings)
    assert [part for part in text.split("; ") if part.startswith("In[")] == [
        f"In[{n}] ran code that no cell of the saved notebook holds" for n in range(1, 6)]
    assert "the tracked cell reads 'x', which no cell defines" in text
    assert text.endswith("; 35 more cells ran code that no cell of the saved notebook holds")
    assert summary(findings[:2]) == "; ".join(f.message for f in findings[:2])
