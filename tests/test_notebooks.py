"""%%track on every cell of real notebooks, in real kernels: the same outputs as without it.

The third-party notebooks are the ones papermill ships for its own tests (nobody on this team wrote
them); ours adds what they lack: inline figures, plt.show() in a loop, a DataFrame result,
display(), another cell magic, and an error.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
from pathlib import Path

import nbformat
import papermill
import pytest

from conftest import SHOWCASE, run_notebook

PAPERMILL_NOTEBOOKS = Path(papermill.__file__).parent / "tests" / "notebooks"
# Chosen to execute offline in a python3 kernel without parameters injected. Left out: the GCS and
# S3 ones (network), sysexit*/systemexit (they end the kernel on purpose), keyboard_interrupt
# (interrupts itself), broken*/notimplemented_translator/read_check (need papermill's harness).
THIRD_PARTY = ["simple_execute.ipynb", "complex_parameters.ipynb", "nb_version_4.4.ipynb",
               "test_logging.ipynb", "report_mode_test.ipynb", "line_magic_error.ipynb",
               "result_no_exec.ipynb"]

OURS = [
    "import matplotlib.pyplot as plt\nimport pandas as pd\nfrom IPython.display import display",
    "fig, ax = plt.subplots()\nax.plot([1, 2, 3])\nax.set_title('inline')",
    "for k in range(2):\n    plt.figure()\n    plt.bar([1, 2], [k, k + 1])\n    plt.show()",
    "frame = pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})\nframe",
    "display(frame.head(1))\nprint('shown', end='')\n42",
    "%%time\ntotal = sum(range(1000))\ntotal",
    "%%capture captured\nprint('hidden')",
    "captured.stdout",
    "raise ValueError('expected failure')",
    "after = 'still runs'\nafter",
]


def our_notebook(path: Path) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in OURS]
    nbformat.write(notebook, path)
    return path


def tracked_copy(notebook) -> nbformat.NotebookNode:
    tracked = copy.deepcopy(notebook)
    for cell in tracked.cells:
        if cell.cell_type == "code" and not cell.source.startswith("%%track"):
            cell.source = "%%track\n" + cell.source
    tracked.cells.insert(0, nbformat.v4.new_code_cell("%load_ext nbtrack"))
    return tracked


def without_nbtrack_lines(outputs) -> list[dict]:
    """Outputs with nbtrack's own lines removed and streams of one name joined, as a reader
    sees them."""
    cleaned: list[dict] = []
    for output in outputs:
        output = dict(output)
        if output["output_type"] == "stream":
            text = "".join(line for line in output["text"].splitlines(keepends=True)
                           if not line.startswith("nbtrack:"))
            if cleaned and cleaned[-1]["output_type"] == "stream" \
                    and cleaned[-1]["name"] == output["name"]:
                cleaned[-1]["text"] += text
                continue
            if not text:
                continue
            output["text"] = text
        cleaned.append(output)
    return [o for o in cleaned if o["output_type"] != "stream" or o["text"]]


def comparable(output: dict) -> dict:
    kind = output["output_type"]
    if kind == "stream":
        return {"stream": output["name"], "text": _no_timings(output["text"])}
    if kind == "error":
        # A SyntaxError names the cell's compiled file, a hash of the cell's text (which the
        # %%track line changes); everything else about the error must be the same.
        return {"error": output["ename"],
                "value": re.sub(r"\(\d+\.py, ", "(<cell>.py, ", output["evalue"])}
    data = dict(output.get("data", {}))
    if "image/png" in data:
        png = base64.b64decode(data["image/png"])
        assert png.startswith(b"\x89PNG")
        data["image/png"] = "<png>"
    return {kind: data}


def _no_timings(text: str) -> str:
    # %%time prints wall and CPU times, which differ between any two executions.
    return "\n".join("<timing>" if line.startswith(("CPU times", "Wall time")) else line
                     for line in text.splitlines())


def summary_lines(outputs) -> list[str]:
    return [line for o in outputs if o["output_type"] == "stream" and o["name"] == "stdout"
            for line in o["text"].splitlines() if line.startswith("nbtrack: run")]


def nbtrack_warnings(outputs) -> list[str]:
    return [line for o in outputs if o["output_type"] == "stream" and o["name"] == "stderr"
            for line in o["text"].splitlines() if line.startswith("nbtrack:")]


def notebook_cases():
    cases = [pytest.param(PAPERMILL_NOTEBOOKS / name, id=name) for name in THIRD_PARTY
             if (PAPERMILL_NOTEBOOKS / name).exists()]
    return cases + [pytest.param(None, id="ours-figures-frames-magics-errors")]


@pytest.mark.parametrize("source", notebook_cases())
def test_every_cell_tracked_gives_the_same_outputs(source, tmp_path, store, client):
    work = tmp_path / "nb"
    work.mkdir()
    if source is None:
        path = our_notebook(work / "ours.ipynb")
    else:
        path = work / source.name
        shutil.copy(source, path)
    original = nbformat.read(path, 4)
    if original.nbformat_minor < 5:  # cell ids, which the inserted cell has, came with 4.5
        original = nbformat.v4.upgrade(original, from_version=4, from_minor=original.nbformat_minor)
    plain_path = work / "plain.ipynb"
    nbformat.write(original, plain_path)
    tracked_path = work / "tracked.ipynb"
    nbformat.write(tracked_copy(original), tracked_path)

    plain = run_notebook(plain_path, work, allow_errors=True)
    tracked = run_notebook(tracked_path, work, allow_errors=True,
                           env={"JPY_SESSION_NAME": str(tracked_path),
                                "MLFLOW_EXPERIMENT_NAME": "equivalence"})

    code_cells = [c for c in plain.cells if c.cell_type == "code"]
    tracked_cells = [c for c in tracked.cells if c.cell_type == "code"][1:]
    assert len(code_cells) == len(tracked_cells)
    for index, (before, after) in enumerate(zip(code_cells, tracked_cells, strict=True)):
        expected = [comparable(o) for o in without_nbtrack_lines(before.outputs)]
        seen = [comparable(o) for o in without_nbtrack_lines(after.outputs)]
        assert seen == expected, f"cell {index}: {before.source[:60]!r}"
        assert len(summary_lines(after.outputs)) == 1, f"cell {index}: {after.outputs}"
        assert nbtrack_warnings(after.outputs) == [], f"cell {index}"

    experiment = client.get_experiment_by_name("equivalence")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(tracked_cells)
    # A cell failed when it shows an error, or IPython's one-line UsageError (no traceback).
    failed = {i for i, c in enumerate(code_cells)
              if any(o["output_type"] == "error" or o.get("text", "").startswith("UsageError:")
                     for o in c.outputs)}
    by_count = {int(r.data.tags["nbtrack.execution_count"]): r for r in runs}
    for index, cell in enumerate(tracked_cells):
        run = by_count[cell.execution_count]
        assert run.info.status == ("FAILED" if index in failed else "FINISHED"), index
        shown = sum(1 for o in cell.outputs if "image/png" in o.get("data", {}))
        figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
        assert len(figures) == shown, f"cell {index}: {figures}"


def test_showcase_runs_under_plain_nbconvert(tmp_path, store, client):
    import subprocess
    import sys

    notebook = tmp_path / SHOWCASE.name
    shutil.copy(SHOWCASE, notebook)
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         str(notebook), "--output", "out.ipynb"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**__import__("os").environ, "JPY_SESSION_NAME": str(notebook),
             "MLFLOW_EXPERIMENT_NAME": "showcase"})
    assert done.returncode == 0, done.stderr[-3000:]
    import mlflow

    experiment = client.get_experiment_by_name("showcase")
    runs = {r.data.tags["mlflow.runName"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"logreg-C0.01", "logreg-C0.1", "logreg-C1.0", "random-forest",
                         "sgd-epochs"}
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert 0.9 < run.data.metrics["val_auc"] <= 1.0
        assert run.data.params["seed"] == "42"
        assert run.data.tags["nbtrack.notebook"].endswith("train_v2_final.ipynb")
        assert run.data.tags["nbtrack.batch"] == "nbconvert"
    forest = runs["random-forest"]
    figures = [a.path for a in client.list_artifacts(forest.info.run_id, "figures")]
    assert figures == ["figures/01-random-forest-roc-auc-0-995.png"]
    models = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id],
                                         output_format="list")
    assert {(m.name, str(m.status)) for m in models if m.source_run_id == forest.info.run_id} \
        == {("rf", "READY")}
    forest_model = mlflow.pyfunc.load_model(
        next(m.model_uri for m in models if m.source_run_id == forest.info.run_id))
    assert len(forest_model.predict(forest_model.input_example)) == 5
    executed = nbformat.read(tmp_path / "out.ipynb", 4)
    warnings = [line for cell in executed.cells for o in cell.get("outputs", [])
                if o.get("name") == "stderr"
                for line in o["text"].splitlines() if line.startswith("nbtrack:")]
    assert warnings == []
    loss = client.get_metric_history(runs["sgd-epochs"].info.run_id, "train_loss")
    assert sorted(p.step for p in loss) == list(range(int(runs["sgd-epochs"].data.params["epochs"])))
    assert runs["logreg-C0.1"].data.params["C"] == "0.1"
    inputs = {d.dataset.name for d in runs["logreg-C0.1"].inputs.dataset_inputs}
    assert {"X_train", "y_train", "X_test", "y_test"} <= inputs
    board = executed.cells[-1].outputs[0]
    assert "<table" in board.data["text/html"] and "logreg-C1.0" in board.data["text/plain"]
