"""Warnings in tracked cells are shown exactly as without nbtrack: never repeated, never lost,
whatever nbtrack's threads are doing (a real kernel, with the writer working in the background)."""

from __future__ import annotations

import re

from conftest import run_notebook, write_notebook

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
    return write_notebook(path, [first, *(prefix + source for source in CELLS)])


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


# A model whose saving, on nbtrack's writer thread, holds warnings off for every thread as a model
# flavor may (MLflow's own do, briefly), until the next cell has warned or a few seconds have
# passed: the fault that made a LightGBM warning vanish, made certain instead of a matter of luck.
SLOW_TO_SAVE = '''
import threading, time, warnings
from pathlib import Path
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

SAVING, WARNED = Path("saving"), Path("warned")

class SlowToSave(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.zeros(len(X), dtype=int)

    def __getstate__(self):
        if threading.current_thread().name.startswith("nbtrack-"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                SAVING.touch()
                for _ in range(100):
                    if WARNED.exists():
                        break
                    time.sleep(0.05)
        return dict(self.__dict__)
'''

NEXT_CELL = '''
for _ in range(100):  # the writer is saving the model now, if it may
    if SAVING.exists():
        break
    time.sleep(0.05)
warnings.warn("while the model is saved", UserWarning)
WARNED.touch()
'''


def test_a_cell_warning_while_the_writer_saves_a_model_is_shown(tmp_path, store):
    write_notebook(tmp_path / "slow.ipynb", [
        "%load_ext nbtrack",
        SLOW_TO_SAVE,
        "%%track\nmodel = SlowToSave().fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]))",
        NEXT_CELL,
    ])
    executed = run_notebook(tmp_path / "slow.ipynb", tmp_path, env={"NBTRACK_WAIT_FOR_STORE": "0"})
    assert (tmp_path / "warned").exists()
    assert any("UserWarning: while the model is saved" in line
               for line in stderr_lines(executed)[3]), executed.cells[3].outputs
