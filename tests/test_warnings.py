"""Warnings in tracked cells are shown exactly as without nbtrack: never repeated, never lost,
whatever nbtrack's threads are doing (a real kernel, with the writer working in the background)."""

from __future__ import annotations

import re

import nbformat
from conftest import run_notebook

# Each run of a cell is compiled under a file name of its own: /tmp/ipykernel_<pid>/<hash>.py.
CELL_FILE = re.compile(r"\S*ipykernel_\d+/\d+\.py")

CELLS = [
    # Python shows a UserWarning once per place (the "default" action).
    "import warnings\n"
    "from sklearn.datasets import load_breast_cancer\n"
    "from sklearn.linear_model import LogisticRegression\n"
    "X, y = load_breast_cancer(return_X_y=True)\n"
    "def helper():\n"
    "    warnings.warn('the data is old', UserWarning)",
    "helper()",  # shown
    "helper()",  # the same place: not shown again
    "for i in range(3):\n"
    "    warnings.warn('in a loop', UserWarning)\n"
    "    helper()",  # 'in a loop' once, helper not at all
    # A model the background writer logs with MLflow's sklearn flavor (which changes warning
    # filters while it saves) while the next cell is about to start; its ConvergenceWarning is
    # raised inside scikit-learn, one place for every fit.
    "clf = LogisticRegression(max_iter=3).fit(X, y)",
    "clf2 = LogisticRegression(max_iter=3).fit(X, y)\n"
    "helper()\n"
    "warnings.warn('after the model', UserWarning)",
    "import numpy as np\n"
    "np.log(-1.0)",
    "warnings.warn('last one', UserWarning)\n"
    "helper()",
]


def notebook(path, first: str, prefix: str):
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(first)]
    book.cells += [nbformat.v4.new_code_cell(prefix + source) for source in CELLS]
    nbformat.write(book, path)
    return path


def stderr_lines(executed) -> list[list[str]]:
    """Each code cell's stderr lines, nbtrack's own lines left out."""
    cells = []
    for cell in executed.cells:
        lines = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                lines += [CELL_FILE.sub("<cell>", line) for line in output["text"].splitlines()
                          if not line.startswith("nbtrack:")]
        cells.append(lines)
    return cells


def nbtrack_warnings(executed) -> list[str]:
    return [line for cell in executed.cells for output in cell.get("outputs", [])
            if output.get("output_type") == "stream" and output.get("name") == "stderr"
            for line in output["text"].splitlines() if line.startswith("nbtrack:")]


def test_warnings_are_shown_as_without_nbtrack_while_the_writer_logs_models(tmp_path, store):
    plain = run_notebook(notebook(tmp_path / "plain.ipynb", "pass", ""), tmp_path)
    # The writer works in the background, between cells, as in an interactive notebook.
    tracked = run_notebook(notebook(tmp_path / "tracked.ipynb", "%load_ext nbtrack", "%%track\n"),
                           tmp_path, env={"NBTRACK_WAIT_FOR_STORE": "0"})
    expected, seen = stderr_lines(plain), stderr_lines(tracked)
    shown = [line for lines in expected for line in lines if "Warning:" in line]
    # The notebook does what it says: a place warns once in a cell, however often it is reached
    # (Jupyter itself may reset what was shown between cells: the untracked run is the measure).
    assert sum("in a loop" in line for line in shown) == 1, shown
    assert any("ConvergenceWarning" in line for line in expected[6]), expected[6]
    for index, (want, got) in enumerate(zip(expected, seen, strict=True)):
        assert got == want, f"cell {index}: {CELLS[index - 1] if index else ''!r}"
    assert nbtrack_warnings(tracked) == []
