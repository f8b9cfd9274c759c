"""The package's layout keeps its one-way flow: a test of the imports, naming the offending file.

ipython/ -> tracker -> capture/ -> durable/ -> store/ <- board/, cli, batch. MLflow is imported only
under store/, IPython only under ipython/; capture/ imports neither (nor the store); the board never
reaches for the tracker or capture; no module is over 500 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "nbtrack"
MAX_LINES = 500


def modules() -> dict[str, Path]:
    return {str(path.relative_to(PACKAGE.parent)): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """Every module the file imports, at any depth (inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def offenders(where, forbidden) -> list[str]:
    found = []
    for name, path in modules().items():
        if not where(name):
            continue
        bad = sorted(n for n in imported(path) if any(n == f or n.startswith(f + ".") for f in forbidden))
        if bad:
            found.append(f"{name}: {', '.join(bad)}")
    return found


def test_mlflow_is_imported_only_under_store():
    assert offenders(lambda name: not name.startswith("nbtrack/store/"), ["mlflow"]) == []


def test_ipython_is_imported_only_under_ipython():
    assert offenders(lambda name: not name.startswith("nbtrack/ipython/"), ["IPython"]) == []


def test_capture_imports_neither_mlflow_nor_ipython_nor_the_store():
    assert offenders(lambda name: name.startswith("nbtrack/capture/"),
                     ["mlflow", "IPython", "nbtrack.store", "nbtrack.durable", "nbtrack.tracker",
                      "nbtrack.ipython", "nbtrack.board"]) == []


def test_the_board_never_reaches_for_the_tracker_or_capture():
    assert offenders(lambda name: name.startswith("nbtrack/board/"),
                     ["nbtrack.tracker", "nbtrack.capture", "nbtrack.ipython"]) == []


def test_the_store_and_durable_rooms_never_reach_back_up_the_flow():
    assert offenders(lambda name: name.startswith(("nbtrack/store/", "nbtrack/durable/")),
                     ["nbtrack.tracker", "nbtrack.ipython", "nbtrack.board"]) == []


def test_no_module_is_over_500_lines():
    long = [f"{name}: {len(path.read_text().splitlines())} lines"
            for name, path in modules().items() if len(path.read_text().splitlines()) > MAX_LINES]
    assert long == []
