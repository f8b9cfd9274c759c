"""Rebuild a run: write a notebook that re-creates it from its execution history, run it, and check
the result against the original.

The notebook follows what the kernel actually ran (``lineage/history.py``), in that order, with
the values it ran with, not the notebook as saved; a markdown cell heads it with the source
notebook, git commit, data digests, package versions and any hidden state. Executing it goes
through :mod:`nbtrack.batch` like any ``nbtrack run``. Nothing here imports MLflow or IPython.
"""

from __future__ import annotations

import importlib.metadata
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nbtrack.capture import history
from nbtrack.capture.notebook import parameters_source, saved_cells
from nbtrack.capture.secrets import REDACTED
from nbtrack.errors import NbtrackError
from nbtrack.record import (
    EXECUTION_COUNT_TAG,
    GIT_BRANCH_TAG,
    GIT_DIRTY_TAG,
    REPRODUCES_TAG,
    REPRODUCTION_OF_TAG,
    RunFacts,
)

REPRODUCES_TAG = REPRODUCES_TAG  # on the reproduction's run of the tracked cell
REPRODUCTION_OF_TAG = REPRODUCTION_OF_TAG  # on runs of earlier tracked cells it re-ran
DEFAULT_RTOL = 1e-9


@dataclass(frozen=True)
class Plan:
    """A reproduction notebook and what was found while writing it."""

    notebook: object  # nbformat.NotebookNode
    original: RunFacts
    entries: tuple[history.Entry, ...]  # the history entries it holds, in order
    findings: tuple[history.Finding, ...] = ()  # hidden state
    notes: tuple[str, ...] = ()  # what the notebook cannot rebuild exactly (redacted secrets...)


@dataclass(frozen=True)
class MetricCheck:
    """One metric of the original run next to the reproduction's."""

    key: str
    original: float | None
    reproduced: float | None
    same: bool


@dataclass(frozen=True)
class Verdict:
    """How a reproduction compares with its original."""

    metrics: tuple[MetricCheck, ...]
    drift: tuple[str, ...] = field(default=())  # data digests or package versions now different

    @property
    def ok(self) -> bool:
        """Every metric of the original came out the same (within the tolerance)."""
        return all(check.same for check in self.metrics)


# -- reading a run's lineage --------------------------------------------------------------------


def entries_of(facts: RunFacts) -> list[history.Entry]:
    """The history a run recorded, its tracked cell last; just that cell when the run was made
    with history capture off. NbtrackError when the run has neither.
    """
    if facts.history:
        entries = history.parse(facts.history)
        if entries:
            return entries
    if facts.source:
        count = int(facts.tags.get(EXECUTION_COUNT_TAG) or 0)
        return [history.Entry(count, facts.source)]
    raise NbtrackError(f"run {facts.run_id!r} recorded no cell source or history, so there is "
                       "nothing to rebuild it from (was it made by %%track?).")


def hidden_state(facts: RunFacts) -> list[history.Finding]:
    """Signs of hidden state in the run's history (see :func:`nbtrack.capture.history.find`)."""
    if not facts.history:
        return []
    return history.find(history.parse(facts.history), saved_cells(facts.notebook))


# -- writing the notebook -----------------------------------------------------------------------


def retag_track_line(source: str, run_id: str, final: bool) -> str:
    r"""Point a ``%%track`` cell's run at the original: ``-t nbtrack.reproduces=RUN_ID`` on the
    tracked cell (``nbtrack.reproduction_of`` on earlier ones), and no ``--register``, so that a
    reproduction never adds a version to the registry.

    >>> retag_track_line("%%track -n fit --register clf\nC = 1", "abc", final=True)
    '%%track -n fit -t nbtrack.reproduces=abc\nC = 1'
    """
    first, newline, body = source.partition("\n")
    if not first.startswith("%%track"):
        return source
    try:
        arguments = shlex.split(first[len("%%track"):])
    except ValueError:  # unbalanced quotes: the original cell did not track either
        return source
    kept: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--register":
            skip = True
        elif not argument.startswith("--register="):
            kept.append(argument)
    kept += ["-t", f"{REPRODUCES_TAG if final else REPRODUCTION_OF_TAG}={run_id}"]
    return f"%%track {shlex.join(kept)}{newline}{body}"


def _header(facts: RunFacts, findings: Sequence[history.Finding], notes: Sequence[str],
            minimal: bool) -> str:
    def code(text) -> str:
        return f"`{text}`"

    lines = [f"# Reproduction of run '{facts.name}'", "",
             f"Rebuilt by `nbtrack reproduce` from run {code(facts.run_id)} of experiment "
             f"'{facts.experiment}' ({facts.status}). The cells below are the kernel's execution "
             "history up to the tracked cell, in the order they ran"
             + (", cut to what the tracked cell depends on (`--minimal`)" if minimal else "")
             + ": what actually ran, not the notebook as saved.", ""]
    lines.append(f"- **source notebook**: {code(facts.notebook_path or 'none (not run from a notebook)')}")
    commit = facts.git_commit
    if commit:
        dirty = facts.tags.get(GIT_DIRTY_TAG)
        state = " (uncommitted changes)" if dirty == "true" else ""
        branch = facts.tags.get(GIT_BRANCH_TAG)
        lines.append(f"- **git commit**: {code(commit)}" + (f" on {code(branch)}" if branch else "")
                     + state)
    else:
        lines.append("- **git commit**: none recorded")
    if facts.datasets:
        lines.append("- **data digests**: " + ", ".join(
            f"{d.name} {code(d.digest)}" for d in facts.datasets))
    if facts.versions:
        lines.append("- **package versions**: " + ", ".join(
            f"{name} {version}" for name, version in sorted(facts.versions.items())))
    if facts.params:
        lines.append("- **params**: " + ", ".join(
            f"{k}={v}" for k, v in sorted(facts.params.items())))
    if facts.metrics:
        lines.append("- **metrics**: " + ", ".join(
            f"{k}={v!r}" for k, v in sorted(facts.metrics.items())))
    if findings:
        lines += ["", "**Hidden state**: the saved notebook does not rebuild this run:"]
        lines += [f"- {finding.message}" for finding in findings]
    if notes:
        lines += [""] + [f"**Note**: {note}" for note in notes]
    return "\n".join(lines)


def plan(facts: RunFacts, minimal: bool = False) -> Plan:
    """Write the reproduction notebook of a run (in memory).

    Parameters
    ----------
    facts
        The run, as :func:`nbtrack.store.query.run_facts` reads it.
    minimal
        Keep only the history entries the tracked cell depends on.

    Returns
    -------
    Plan
        The notebook, the entries it holds and the hidden state found.

    Examples
    --------
    >>> import nbformat  # doctest: +SKIP
    >>> nbformat.write(plan(query.run_facts(run_id)).notebook, "rebuilt.ipynb")  # doctest: +SKIP

    """
    import nbformat

    entries = [e for e in entries_of(facts) if e.source.strip()]
    findings = hidden_state(facts)
    if minimal:
        entries = history.minimal(entries)
    if not any("%load_ext nbtrack" in e.source for e in entries):
        # nbtrack was loaded from the kernel's config, not by a cell: %%track needs it loaded.
        entries.insert(0, history.Entry(0, "%load_ext nbtrack"))
    notes = []
    if not facts.history:
        notes.append("the run recorded no execution history (history capture was off): only "
                     "the tracked cell is here, and the cells it depends on are missing.")
    if any(REDACTED in e.source for e in entries):
        notes.append("secrets were redacted when the run was recorded: set them again before "
                     "running this notebook.")
    saved = saved_cells(facts.notebook) or []
    parameters = parameters_source(facts.notebook)
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.metadata["nbtrack"] = {"reproduces": facts.run_id, "experiment": facts.experiment}
    cells = [nbformat.v4.new_markdown_cell(_header(facts, findings, notes, minimal))]
    saved_sources = {source.strip() for _, source in saved}
    for index, entry in enumerate(entries):
        final = index == len(entries) - 1
        cell = nbformat.v4.new_code_cell(retag_track_line(entry.source, facts.run_id, final))
        cell.metadata["nbtrack"] = {"history_count": entry.count,
                                    "in_saved_notebook": entry.source.strip() in saved_sources}
        if parameters is not None and entry.source.strip() == parameters:
            cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    notebook.cells = cells
    return Plan(notebook, facts, tuple(entries), tuple(findings), tuple(notes))


def default_output(facts: RunFacts, folder: Path | None = None) -> Path:
    """``<notebook>-reproduce-<run id>.ipynb`` in ``folder`` (default: the current folder)."""
    stem = Path(facts.notebook_path).stem if facts.notebook_path else "run"
    return (folder or Path.cwd()) / f"{stem}-reproduce-{facts.run_id[:8]}.ipynb"


def write(plan_: Plan, path: Path) -> Path:
    """Write the reproduction notebook to ``path`` (folders made as needed)."""
    import nbformat

    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(plan_.notebook, str(path))
    return path


# -- running it and checking the result ---------------------------------------------------------


def execution_folder(facts: RunFacts, output: Path) -> Path:
    """Where the reproduction runs: the original notebook's folder when it is on this machine
    (relative data paths then resolve as they did), else the reproduction's own folder.
    """
    if facts.notebook_path:
        folder = Path(facts.notebook_path).parent
        if folder.is_dir():
            return folder
    return output.resolve().parent


def compare_metrics(original: dict[str, float], reproduced: dict[str, float],
                    rtol: float = DEFAULT_RTOL) -> tuple[MetricCheck, ...]:
    """Each metric of the original against the reproduction's, equal within ``rtol``.

    >>> [c.same for c in compare_metrics({"auc": 0.9, "loss": 0.2}, {"auc": 0.9, "loss": 0.3})]
    [True, False]
    """
    checks = []
    for key in sorted(original):
        a, b = original[key], reproduced.get(key)
        same = b is not None and (a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=0.0))
        checks.append(MetricCheck(key, a, b, same))
    return tuple(checks)


def drift(original: RunFacts, reproduced: RunFacts | None = None,
          installed: dict[str, str] | None = None) -> tuple[str, ...]:
    """What is different now: data digests (against the reproduced run) and package versions
    (against the reproduced run, else against ``installed``), one line each.
    """
    lines = []
    if reproduced is not None:
        a, b = original.digests, reproduced.digests
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                lines.append(f"data changed: dataset {name!r} had digest {a.get(name) or '-'} in "
                             f"the original run, {b.get(name) or '-'} now")
    now = reproduced.versions if reproduced is not None else (installed or {})
    for package, version in sorted(original.versions.items()):
        if package in now and now[package] != version:
            lines.append(f"package version changed: {package} {version} in the original run, "
                         f"{now[package]} now")
    return tuple(lines)


def installed_versions(packages) -> dict[str, str]:
    """Versions installed here of the given distributions (and Python's)."""
    import platform

    found = {}
    for package in packages:
        if package == "python":
            found[package] = platform.python_version()
            continue
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def verdict(original: RunFacts, reproduced: RunFacts, rtol: float = DEFAULT_RTOL) -> Verdict:
    """Compare a reproduction's run with the original: metrics, data, packages."""
    return Verdict(compare_metrics(original.metrics, reproduced.metrics, rtol),
                   drift(original, reproduced))


def metrics_table(checks: Sequence[MetricCheck]) -> str:
    """The metrics side by side, as ``nbtrack reproduce --execute`` prints them."""
    rows = [("metric", "original", "reproduced", "")]
    for check in checks:
        rows.append((check.key, _number(check.original), _number(check.reproduced),
                     "same" if check.same else "DIFFERS"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def _number(value: float | None) -> str:
    return "-" if value is None else repr(value)
