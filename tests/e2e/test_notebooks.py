"""%%track on every cell of real notebooks, in real kernels: the same outputs as without it.

The product bar: put ``%%track`` on every cell of real notebooks nobody on the team wrote; each cell
must show the same output, last expression result, figures and errors as without it, plus
nbtrack's one summary line. Each notebook is executed twice with nbclient (python3 kernel): as it
is, and with ``%load_ext nbtrack`` inserted first and ``%%track`` on every code cell. The outputs
are compared cell by cell, then the runs are read back from the MLflow store.

The third-party notebooks are the ones papermill ships for its own tests, found at run time in the
installed package. nbclient 0.11 and nbconvert 7 ship no notebooks in their wheels (checked with
``find``), so there are none of theirs. Ours adds what papermill's lack: inline figures,
``plt.show()`` in a loop, a DataFrame result, ``display()``, other cell magics, ``print(end='')``.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from conftest import SHOWCASE, run_notebook, write_notebook

PAPERMILL_NOTEBOOKS = Path(papermill.__file__).parent / "tests" / "notebooks"

# papermill's test notebooks that execute offline, in seconds, in a python3 kernel, with no
# parameters injected and no files beside them. Between them: a parameters cell with annotations,
# comments and a SyntaxError (complex_parameters), nbformat 4.4 without cell ids (nb_version_4.4),
# logging to stderr and a failing import (test_logging), a failing line magic (line_magic_error),
# AssertionErrors, a display() before an error and Python 2 prints (broken1, broken2), a shadowed
# builtin (report_mode_test), an empty cell (test_logging).
THIRD_PARTY = ["simple_execute.ipynb", "complex_parameters.ipynb", "nb_version_4.4.ipynb",
               "report_mode_test.ipynb", "test_logging.ipynb", "line_magic_error.ipynb",
               "broken1.ipynb", "broken2.ipynb"]
# Left out, by group:
# - gcs/ and s3/: read and write cloud buckets (network and credentials).
# - sysexit.ipynb, sysexit0.ipynb, sysexit1.ipynb, systemexit.ipynb: raise SystemExit on purpose to
#   test how papermill reports a notebook that exits; that is papermill's trickery, not a notebook.
# - keyboard_interrupt.ipynb: sleeps 60 s waiting for papermill to interrupt it.
# - notimplemented_translator.ipynb (R kernel), test_autosave.ipynb (kernel "python", and 2.5 s of
#   sleeps), blank-vscode.ipynb (no kernelspec, one empty cell): not python3 notebooks.
# - read_check.ipynb (asserts a check.txt beside it), binder.ipynb (a %%bash cell running papermill
#   on paths of papermill's source tree): need files that are not there.
# - broken.ipynb: the same cells as broken1.ipynb with one more Python 2 print.
# - test_notebooknode_io.ipynb, no_parameters.ipynb, result_no_exec.ipynb: an assignment, a print,
#   an empty cell, which the notebooks above already have (each notebook costs two kernels).

# Our notebook: (cell source, figures its run must log).
OURS = [
    ("import sys\nimport matplotlib.pyplot as plt\nimport pandas as pd\n"
     "from IPython.display import HTML, clear_output, display", 0),
    # A figure left open: the inline backend shows it after the cell; the last expression is Text.
    ("fig, ax = plt.subplots(figsize=(4, 3))\nax.plot([1, 2, 3])\nax.set_title('left open')", 1),
    ("for k in range(3):\n    plt.figure(figsize=(3, 2))\n    plt.bar([1, 2], [k, k + 1])\n"
     "    plt.title(f'bar {k}')\n    plt.show()", 3),
    ("frame = pd.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', 'z']})\nframe", 0),
    ("display(frame.head(1))\ndisplay(HTML('<b>bold</b>'))\ndisplay(fig)\nlen(frame)", 1),
    ("%%time\ntotal = sum(range(10_000))\ntotal", 0),
    ("%%capture captured\nprint('hidden')\ndisplay(HTML('<i>hidden too</i>'))", 0),
    ("print(captured.stdout.upper(), end='')\nlen(captured.outputs)", 0),
    ("print('out 1', flush=True)\nprint('err 1', file=sys.stderr, flush=True)\nprint('out 2')", 0),
    ("print('gone')\nclear_output()\nprint('kept')", 0),
    ("frame.shape;", 0),
    ("HTML('<p>a rich result</p>')", 0),
    ("print('first', end='')\nprint(', and no newline at the end', end='')", 0),
    ("def fail():\n    raise ValueError('expected failure')\n\nfail()", 0),
    ("after = 'still runs'\nafter", 0),
]
OURS_ID = "ours-figures-frames-magics-errors"

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SUMMARY = re.compile(r"^nbtrack: run '.*$", re.MULTILINE)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def store_file(store: str) -> Path:
    return Path(store.removeprefix("sqlite:///"))


def our_notebook(path: Path) -> Path:
    return write_notebook(path, [source for source, _ in OURS])


def tracked_copy(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook with ``%load_ext nbtrack`` first and ``%%track`` on every code cell."""
    tracked = copy.deepcopy(notebook)
    for cell in tracked.cells:
        if cell.cell_type == "code" and not cell.source.startswith("%%track"):
            cell.source = "%%track\n" + cell.source
    tracked.cells.insert(0, nbformat.v4.new_code_cell("%load_ext nbtrack"))
    return tracked


def merged_streams(outputs) -> list[dict]:
    """Outputs with consecutive streams of one name joined, as a notebook frontend shows them
    (nbclient joins some of them itself, depending on how the kernel's messages arrive)."""
    merged: list[dict] = []
    for output in outputs:
        output = dict(output)
        if output["output_type"] == "stream":
            if merged and merged[-1]["output_type"] == "stream" \
                    and merged[-1]["name"] == output["name"]:
                merged[-1]["text"] += output["text"]
                continue
            if not output["text"]:
                continue
        merged.append(output)
    return merged


def without_nbtrack_lines(outputs: list[dict]) -> tuple[list[dict], int | None]:
    """The outputs with the lines nbtrack printed taken out, and the index (in the result) of the
    stdout stream its summary line was part of (None if it made up a whole output)."""
    kept: list[dict] = []
    host = None
    for output in outputs:
        if output["output_type"] == "stream":
            lines = output["text"].splitlines(keepends=True)
            text = "".join(line for line in lines if not line.startswith("nbtrack:"))
            if not text:
                continue
            if text != output["text"] and SUMMARY.search(output["text"]):
                host = len(kept)
            output = {**output, "text": text}
        kept.append(output)
    cleaned = merged_streams(kept)
    if host is not None and host >= len(cleaned):
        host = None
    return cleaned, host


def png_size(encoded: str) -> tuple[int, int]:
    png = base64.b64decode(encoded)
    assert png.startswith(PNG_SIGNATURE) and png[12:16] == b"IHDR", png[:16]
    return struct.unpack(">II", png[16:24])


def normalized_traceback(lines: list[str]) -> list[str]:
    """A traceback without colours, execution counts (the inserted cell shifts them by one) and
    the names of the files IPython compiles cells into (a hash of the cell's text)."""
    text = ANSI.sub("", "\n".join(lines))
    text = re.sub(r"In\s*\[\d+\]", "In[N]", text)
    text = re.sub(r"(/tmp/)?(ipykernel_\d+/)?\b\d+\.py\b", "<cell>.py", text)
    return text.splitlines()


def comparable(output: dict) -> dict:
    kind = output["output_type"]
    if kind == "stream":
        # %%time prints CPU and wall times, which differ between any two executions.
        text = re.sub(r"(?m)^(CPU times|Wall time): .*$", r"\1: <t>", output["text"])
        return {"stream": output["name"], "text": text}
    if kind == "error":
        return {"error": output["ename"], "value": re.sub(r"\(\d+\.py, ", "(<cell>.py, ",
                                                          output["evalue"]),
                "traceback": normalized_traceback(output["traceback"])}
    data = dict(output.get("data", {}))
    if "image/png" in data:
        # The bytes of a PNG may differ between two renderings; its dimensions must not.
        data["image/png"] = ("png", png_size(data["image/png"]))
    return {kind: data, "metadata": output.get("metadata", {})}


def failed(cell) -> bool:
    """Whether the (untracked) cell failed: an error output, or IPython's one-line UsageError."""
    return any(o["output_type"] == "error"
               or (o["output_type"] == "stream" and o["text"].startswith("UsageError:"))
               for o in cell.outputs)


def shown_pngs(cell) -> int:
    return sum(1 for o in cell.outputs if "image/png" in o.get("data", {}))


def notebook_cases():
    cases = [pytest.param(name, id=name, marks=pytest.mark.skipif(
                 not (PAPERMILL_NOTEBOOKS / name).exists(),
                 reason=f"papermill {papermill.__version__} does not ship {name}"))
             for name in THIRD_PARTY]
    return cases + [pytest.param(None, id=OURS_ID)]


@pytest.mark.parametrize("name", notebook_cases())
def test_every_cell_tracked_gives_the_same_outputs(name, tmp_path, store, empty_store_file):
    from mlflow import MlflowClient

    if name is None:
        # Ours runs on a store that does not exist yet, as a new project's first tracked cell does.
        folder = tmp_path / "ours"
        folder.mkdir()
        source = our_notebook(folder / "ours.ipynb")
        expected_figures = {index: figures for index, (_, figures) in enumerate(OURS)}
    else:
        # The others on a store made beforehand, as a project's usually is.
        shutil.copy(empty_store_file, store_file(store))
        folder = PAPERMILL_NOTEBOOKS
        source = folder / name
        expected_figures = {}
    plain_dir = shutil.copytree(folder, tmp_path / "plain")
    tracked_dir = shutil.copytree(folder, tmp_path / "tracked")

    original = nbformat.read(source, as_version=4)
    if original.nbformat_minor < 5:  # the inserted cell has an id; ids came with nbformat 4.5
        original = nbformat.v4.upgrade(original, from_version=4, from_minor=original.nbformat_minor)
    plain_path = plain_dir / source.name
    tracked_path = tracked_dir / source.name
    nbformat.write(original, plain_path)
    nbformat.write(tracked_copy(original), tracked_path)

    plain = run_notebook(plain_path, plain_dir, allow_errors=True)
    tracked = run_notebook(tracked_path, tracked_dir, allow_errors=True,
                           env={"JPY_SESSION_NAME": str(tracked_path)})

    assert tracked.cells[0].outputs == [], tracked.cells[0].outputs  # %load_ext nbtrack
    plain_cells = [c for c in plain.cells if c.cell_type == "code"]
    tracked_cells = [c for c in tracked.cells[1:] if c.cell_type == "code"]
    assert len(plain_cells) == len(tracked_cells)
    problems = []
    for index, (before, after) in enumerate(zip(plain_cells, tracked_cells, strict=True)):
        where = f"cell {index} {before.source[:50]!r}"
        shown = merged_streams(after.outputs)
        expected = [comparable(o) for o in merged_streams(before.outputs)]
        cleaned, host = without_nbtrack_lines(shown)
        seen = [comparable(o) for o in cleaned]
        if host is not None and host < len(expected) and seen[host].get("stream") == "stdout" \
                and seen[host]["text"] == expected[host].get("text", "") + "\n":
            # The cell's output ended without a newline; the summary had to start a line.
            seen[host] = expected[host]
        if seen != expected:
            problems.append(f"{where}: outputs differ\n  untracked: {expected}\n  tracked:   {seen}")
        stdout = "".join(o["text"] for o in shown
                         if o["output_type"] == "stream" and o["name"] == "stdout")
        if len(SUMMARY.findall(stdout)) != 1:
            problems.append(f"{where}: {len(SUMMARY.findall(stdout))} summary lines in {stdout!r}")
        warnings = [line for o in shown if o["output_type"] == "stream" and o["name"] == "stderr"
                    for line in o["text"].splitlines() if line.startswith("nbtrack:")]
        if warnings:
            problems.append(f"{where}: warnings {warnings}")
        if before.execution_count is not None and after.execution_count != before.execution_count + 1:
            problems.append(f"{where}: In[{after.execution_count}], untracked "
                            f"In[{before.execution_count}] (one more expected, for %load_ext)")
        for output in after.outputs:
            if output["output_type"] == "execute_result" \
                    and output["execution_count"] != after.execution_count:
                problems.append(f"{where}: Out[{output['execution_count']}] of "
                                f"In[{after.execution_count}]")

    client = MlflowClient(tracking_uri=store)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(experiments) == 1, [e.name for e in experiments]
    runs = client.search_runs([experiments[0].experiment_id])
    executed = [c for c in tracked_cells if c.execution_count is not None]
    if len(runs) != len(executed):
        problems.append(f"{len(runs)} runs for {len(executed)} executed tracked cells")
    by_count = {}
    for run in runs:
        by_count.setdefault(run.data.tags.get("nbtrack.execution_count"), []).append(run)
    for index, (before, after) in enumerate(zip(plain_cells, tracked_cells, strict=True)):
        where = f"cell {index} {before.source[:50]!r}"
        found = by_count.get(str(after.execution_count), [])
        if len(found) != 1:
            problems.append(f"{where}: {len(found)} runs tagged with its execution count")
            continue
        run = found[0]
        status = "FAILED" if failed(before) else "FINISHED"
        if run.info.status != status:
            problems.append(f"{where}: run {run.info.status}, expected {status}")
        if not run.data.tags.get("nbtrack.notebook", "").endswith(source.name):
            problems.append(f"{where}: nbtrack.notebook {run.data.tags.get('nbtrack.notebook')}")
        figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
        if not all(re.fullmatch(r"figures/[^/]+\.png", path) for path in figures):
            problems.append(f"{where}: figure artifacts {figures}")
        wanted = expected_figures.get(index)
        if wanted is not None and len(figures) != wanted:
            problems.append(f"{where}: {len(figures)} figures logged, {wanted} expected: {figures}")
        if wanted is None and bool(figures) != bool(shown_pngs(after)):
            problems.append(f"{where}: {shown_pngs(after)} figures shown, logged {figures}")
    assert not problems, "\n".join(problems)


def test_showcase_runs_under_plain_nbconvert(tmp_path, store, empty_store_file):
    import mlflow
    from mlflow import MlflowClient

    assert SHOWCASE.exists(), SHOWCASE
    shutil.copy(empty_store_file, store_file(store))
    client = MlflowClient(tracking_uri=store)
    # Made here so its artifacts go under the test's folder, not ./mlruns beside the notebook
    # (nbconvert runs the kernel in the notebook's folder).
    experiment_id = client.create_experiment("showcase",
                                             artifact_location=(tmp_path / "artifacts").as_uri())
    output = tmp_path / "out.ipynb"
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         str(SHOWCASE), "--output", str(output)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        # As a user's shell has it: no MPLBACKEND (the tests' own Agg), so figures show inline.
        env={**{k: v for k, v in os.environ.items() if k != "MPLBACKEND"},
             "JPY_SESSION_NAME": str(SHOWCASE), "MLFLOW_EXPERIMENT_NAME": "showcase"},
    )
    assert done.returncode == 0, done.stderr[-3000:]

    runs = {r.info.run_name: r for r in client.search_runs([experiment_id])}
    names = {"logreg-C0.01", "logreg-C0.1", "logreg-C1.0", "random-forest", "sgd-epochs"}
    assert names <= set(runs), sorted(runs)
    for name in names:
        run = runs[name]
        assert run.info.status == "FINISHED", name
        assert "val_auc" in run.data.metrics, (name, run.data.metrics)
        assert run.data.params.get("seed") == "42", (name, run.data.params)
        assert run.data.tags["nbtrack.notebook"].endswith("train_v2_final.ipynb"), name
        assert run.data.tags.get("nbtrack.batch") == "nbconvert", name
        # Saving models imported no torch the notebook never imported (skops' first import
        # would, through scikit-learn's vendored array API): the lineage lists no torch.
        assert "nbtrack.version.torch" not in run.data.tags, name
    assert runs["logreg-C0.1"].data.params["C"] == "0.1"
    # The gradient-boosting cell: its params dict (computed: it holds seed), rounds, curve, model.
    boost = runs["xgboost"]
    assert boost.data.params["boost_params.max_depth"] == "3"
    assert boost.data.params["boost_params.seed"] == "42"
    assert boost.data.params["booster.num_boost_round"] == "200"
    assert len(client.get_metric_history(boost.info.run_id, "val-auc")) == 200
    [booster] = [m for m in mlflow.search_logged_models(experiment_ids=[experiment_id],
                                                        output_format="list")
                 if m.source_run_id == boost.info.run_id]
    assert booster.name == "booster"
    assert "xgboost" in mlflow.pyfunc.load_model(f"models:/{booster.model_id}").metadata.flavors

    forest = runs["random-forest"].info.run_id
    figures = [a.path for a in client.list_artifacts(forest, "figures")]
    assert figures and all(re.fullmatch(r"figures/[^/]+\.png", p) for p in figures), figures
    models = [m for m in mlflow.search_logged_models(experiment_ids=[experiment_id],
                                                     output_format="list")
              if m.source_run_id == forest]
    assert [m.name for m in models] == ["rf"]
    info = mlflow.models.get_model_info(f"models:/{models[0].model_id}")
    assert "sklearn" in info.flavors

    sgd = runs["sgd-epochs"]
    loss = client.get_metric_history(sgd.info.run_id, "train_loss")
    assert sorted(point.step for point in loss) == list(range(int(sgd.data.params["epochs"])))

    executed = nbformat.read(output, as_version=4)
    board = [o for o in executed.cells[-1].outputs if "text/html" in o.get("data", {})]
    assert board and "<table" in board[0].data["text/html"], executed.cells[-1].outputs
