"""Handbook-style notebooks with every code cell under ``%%track``: the same outputs as untracked.

The notebooks in ``tests/notebooks/`` (written by ``tests/notebooks/make_notebooks.py``) read like
the NumPy, pandas and scikit-learn chapters of a data-science handbook: imports first, many small
cells, markdown between, inline figures (shown with ``plt.show()`` and left as a last expression),
printed output, DataFrame/array/scalar results, warnings (a helper's warning that Python shows once
per location, a warning in a loop, numpy's and pandas' own) and errors raised on purpose.

Each is executed twice in real kernels (nbclient, inline backend, ``allow_errors``): once as it is,
after a harmless first cell, and once with ``%load_ext nbtrack`` as that first cell and ``%%track``
on every other code cell. For each code cell the two executions must show the same error, the same
last-expression result, the same figures and the same stdout and stderr lines; the tracked cell adds
exactly nbtrack's summary line on stdout and no ``nbtrack:`` warning. The store must then hold one
run per tracked cell, ``FAILED`` for the cells that raised.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import nbformat
import pytest
from conftest import NOTEBOOKS, run_notebook

NAMES = ["numpy_handbook.ipynb", "pandas_handbook.ipynb", "sklearn_handbook.ipynb"]
PREFIX = "nbtrack: "  # nbtrack/display.py: the summary on stdout, a warning on stderr
SUMMARY = re.compile(r"^nbtrack: run '")
WARNING_LINE = re.compile(r"^\S.*:\d+: [A-Za-z_]\w*: ")  # warnings.formatwarning's first line

# What differs between any two executions of the same notebook, tracked or not.
NORMALISE = [
    (re.compile(r"\x1b\[[0-9;]*m"), ""),  # colours
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "0x<id>"),  # object addresses in reprs
    # The file a kernel compiles a cell into: its pid and a hash of the cell's text.
    (re.compile(r"(?:/[^\s:'\"]*)?/ipykernel_\d+/\d+\.py"), "<cell>.py"),
    (re.compile(r"\bIn ?\[\d+\]"), "In[N]"),
    # %timeit: its figures, and the hint it adds when one run was much slower than another.
    (re.compile(r"[\d.]+ (?:ns|[µμ]s|us|ms|s) ± [\d.]+ (?:ns|[µμ]s|us|ms|s) per loop"), "<t> ± <t> per loop"),
    (re.compile(r"(?m)^The slowest run took .*\n?"), ""),
]


def normalised(text: str) -> str:
    for pattern, replacement in NORMALISE:
        text = pattern.sub(replacement, text)
    return text


def variants(source: Path, folder: Path) -> tuple[Path, Path]:
    """Write the untracked and tracked variants of ``source`` into two folders of ``folder``."""
    original = nbformat.read(source, as_version=4)
    plain = copy.deepcopy(original)
    plain.cells.insert(0, nbformat.v4.new_code_cell("# untracked: nbtrack is not loaded", id="first"))
    tracked = copy.deepcopy(original)
    for cell in tracked.cells:
        if cell.cell_type == "code":
            cell.source = "%%track\n" + cell.source
    tracked.cells.insert(0, nbformat.v4.new_code_cell("%load_ext nbtrack", id="first"))
    paths = []
    for kind, notebook in (("plain", plain), ("tracked", tracked)):
        (folder / kind).mkdir()
        paths.append(folder / kind / source.name)
        nbformat.write(notebook, paths[-1])
    return paths[0], paths[1]


def stream_lines(cell, name: str) -> list[str]:
    text = "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == name)
    return normalised(text).splitlines()


def observed(cell, nbtrack_lines: dict[str, list[str]] | None = None) -> dict:
    """What a code cell showed, comparable between two executions. With ``nbtrack_lines`` (a
    tracked cell), the lines nbtrack printed are taken out of the streams and put there."""
    streams = {}
    for name in ("stdout", "stderr"):
        lines = stream_lines(cell, name)
        if nbtrack_lines is not None:
            nbtrack_lines[name] = [line for line in lines if line.startswith(PREFIX)]
            lines = [line for line in lines if not line.startswith(PREFIX)]
        streams[name] = lines
    errors = [(o["ename"], normalised(o["evalue"])) for o in cell.outputs if o["output_type"] == "error"]
    results = [{"text/plain": normalised(o["data"].get("text/plain", "")),
                "image/png": "image/png" in o["data"], "text/html": "text/html" in o["data"]}
               for o in cell.outputs if o["output_type"] == "execute_result"]
    displays = [o for o in cell.outputs if o["output_type"] == "display_data"]
    return {
        "error": errors,
        "execute_result": results,
        "display_data images": sum("image/png" in o["data"] for o in displays),
        "display_data kinds": [sorted(o["data"]) for o in displays],
        **streams,
    }


def fixture_problems(cell, where: str) -> list[str]:
    """Whether the untracked cell did what its tags say (a library update may stop a warning)."""
    tags = cell.metadata.get("tags", [])
    errors = [o["ename"] for o in cell.outputs if o["output_type"] == "error"]
    stderr = stream_lines(cell, "stderr")
    wanted = [tag.removeprefix("raises-") for tag in tags if tag.startswith("raises-")]
    problems = []
    if errors != wanted:
        problems.append(f"{where}: untracked raised {errors}, the notebook expects {wanted}")
    shown = [line for line in stderr if WARNING_LINE.match(line)]
    if "warns" in tags and not shown:
        problems.append(f"{where}: untracked showed no warning, the notebook expects one: {stderr}")
    if "warns-once" in tags and len(shown) != 1:
        problems.append(f"{where}: untracked showed {len(shown)} warnings, the notebook expects "
                        f"one (Python shows a warning once per location): {stderr}")
    return problems


def cell_diff(where: str, source: str, before: dict, after: dict) -> str:
    lines = [f"{where} differs; source:", *("    " + line for line in source.splitlines())]
    for key in before:
        if before[key] != after[key]:
            lines += [f"  {key}:", f"    untracked: {before[key]!r}", f"    tracked:   {after[key]!r}"]
    return "\n".join(lines)


@pytest.mark.parametrize("name", NAMES)
def test_tracked_handbook_notebook_shows_what_untracked_shows(name, tmp_path, store):
    from mlflow import MlflowClient

    source = NOTEBOOKS / name
    code_cells = [c for c in nbformat.read(source, as_version=4).cells if c.cell_type == "code"]
    assert 15 <= len(code_cells) <= 30, len(code_cells)
    plain_path, tracked_path = variants(source, tmp_path)
    plain = run_notebook(plain_path, plain_path.parent, allow_errors=True)
    tracked = run_notebook(tracked_path, tracked_path.parent, allow_errors=True,
                           env={"JPY_SESSION_NAME": str(tracked_path)})

    assert plain.cells[0].outputs == [], plain.cells[0].outputs
    assert tracked.cells[0].outputs == [], tracked.cells[0].outputs  # %load_ext nbtrack
    pairs = [(before, after) for before, after in zip(plain.cells[1:], tracked.cells[1:], strict=True)
             if before.cell_type == "code"]
    broken_fixture, differences, nbtrack_problems = [], [], []
    for index, (before, after) in enumerate(pairs):
        where = f"{name} code cell {index} {before.source.splitlines()[0][:60]!r}"
        broken_fixture += fixture_problems(before, where)
        printed: dict[str, list[str]] = {}
        expected, seen = observed(before), observed(after, printed)
        if seen != expected:
            differences.append(cell_diff(where, before.source, expected, seen))
        summaries = [line for line in printed["stdout"] if SUMMARY.match(line)]
        if len(summaries) != 1 or len(printed["stdout"]) != 1:
            nbtrack_problems.append(f"{where}: nbtrack printed {printed['stdout']} on stdout, "
                                    "expected exactly one summary line")
        if printed["stderr"]:
            nbtrack_problems.append(f"{where}: nbtrack warned {printed['stderr']}")

    client = MlflowClient(tracking_uri=store)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(experiments) == 1, [e.name for e in experiments]
    runs = client.search_runs([experiments[0].experiment_id], max_results=1000)
    if len(runs) != len(pairs):
        nbtrack_problems.append(f"{len(runs)} runs in the store for {len(pairs)} tracked cells")
    by_count: dict[str | None, list] = {}
    for run in runs:
        by_count.setdefault(run.data.tags.get("nbtrack.execution_count"), []).append(run)
    for index, (before, after) in enumerate(pairs):
        where = f"{name} code cell {index} {before.source.splitlines()[0][:60]!r}"
        found = by_count.get(str(after.execution_count), [])
        if len(found) != 1:
            nbtrack_problems.append(f"{where}: {len(found)} runs for In[{after.execution_count}]")
            continue
        raised = any(o["output_type"] == "error" for o in before.outputs)
        status = "FAILED" if raised else "FINISHED"
        if found[0].info.status != status:
            nbtrack_problems.append(f"{where}: run {found[0].info.status}, expected {status}")

    # The notebook's snapshot in the last run must be a valid notebook (nbtrack rewrites its cells).
    last = max(runs, key=lambda run: run.info.start_time)
    snapshot = json.loads(Path(client.download_artifacts(
        last.info.run_id, f"lineage/{name}", str(tmp_path / "download"))).read_text())
    try:
        nbformat.validate(snapshot)
    except nbformat.ValidationError as error:
        nbtrack_problems.append(f"lineage/{name} of run {last.info.run_id} is not a valid notebook: "
                                f"{' '.join(str(error).split())[:300]}")

    report = []
    if broken_fixture:
        report += ["The untracked notebook does not do what it was written to do:", *broken_fixture]
    if differences:
        report += [f"{len(differences)} of {len(pairs)} cells show something else when tracked:",
                   *differences]
    if nbtrack_problems:
        report += ["nbtrack's own lines and runs:", *nbtrack_problems]
    assert not report, "\n".join(report)
