"""Why two runs differ: params, metrics, the tracked cell's source, data, packages, git commits.

:func:`compare` works on two :class:`~nbtrack.record.RunFacts`; ``nbtrack diff`` prints
:func:`text` of it and the board's compare view renders the same :class:`RunDiff` as HTML
(:func:`nbtrack.board.render.diff_html`). Nothing here imports MLflow.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from nbtrack.record import RunFacts

MISSING = None  # a key one of the two runs does not have


@dataclass(frozen=True)
class Change:
    """One key whose value differs: ``a`` and ``b`` are the two runs' values (None: absent)."""

    key: str
    a: str | float | None
    b: str | float | None


@dataclass(frozen=True)
class RunDiff:
    """Everything that differs between run ``a`` and run ``b``; empty sections are equal."""

    a: str  # run labels: "name (run id)"
    b: str
    params: tuple[Change, ...] = ()
    metrics: tuple[Change, ...] = ()
    source: str = ""  # unified diff of cell/source.py ("" when equal)
    datasets: tuple[Change, ...] = ()  # dataset name -> digest
    versions: tuple[Change, ...] = ()
    git: tuple[Change, ...] = ()  # commit, dirty flag, branch
    notebooks: tuple[Change, ...] = ()

    @property
    def sections(self) -> list[tuple[str, tuple[Change, ...]]]:
        """The key-value sections, titled, in the order they are shown."""
        return [("params", self.params), ("metrics", self.metrics), ("data digests", self.datasets),
                ("package versions", self.versions), ("git", self.git),
                ("notebook", self.notebooks)]

    @property
    def same(self) -> bool:
        """True when nothing differs."""
        return not self.source and not any(changes for _, changes in self.sections)


def label(facts: RunFacts) -> str:
    """How a run is named in a diff: ``'logreg' (3f2a9c1b)``."""
    return f"'{facts.name}' ({facts.run_id[:8]})"


def changes(a: dict, b: dict) -> tuple[Change, ...]:
    """The keys of two mappings whose values differ, sorted.

    >>> changes({"C": "0.1", "seed": "1"}, {"C": "1.0", "seed": "1", "tol": "0.01"})
    (Change(key='C', a='0.1', b='1.0'), Change(key='tol', a=None, b='0.01'))
    """
    return tuple(Change(k, a.get(k, MISSING), b.get(k, MISSING))
                 for k in sorted(set(a) | set(b)) if a.get(k, MISSING) != b.get(k, MISSING))


def source_diff(a: str | None, b: str | None, label_a: str = "a", label_b: str = "b") -> str:
    """The unified diff of two cell sources ("" when they are equal)."""
    lines = difflib.unified_diff((a or "").splitlines(keepends=True),
                                 (b or "").splitlines(keepends=True),
                                 fromfile=label_a, tofile=label_b)
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return text


def _git(facts: RunFacts) -> dict[str, str]:
    git = {"commit": facts.git_commit}
    for key in ("dirty", "branch"):
        git[key] = facts.tags.get(f"nbtrack.git.{key}")
    return {k: v for k, v in git.items() if v is not None}


def compare(a: RunFacts, b: RunFacts) -> RunDiff:
    """What differs between two runs.

    Examples
    --------
    >>> from nbtrack import query  # doctest: +SKIP
    >>> print(text(compare(query.run_facts(id_a), query.run_facts(id_b))))  # doctest: +SKIP

    """
    label_a, label_b = label(a), label(b)
    notebooks = changes({"path": a.notebook_path} if a.notebook_path else {},
                        {"path": b.notebook_path} if b.notebook_path else {})
    return RunDiff(
        a=label_a, b=label_b,
        params=changes(a.params, b.params),
        metrics=changes(a.metrics, b.metrics),
        source=source_diff(a.source, b.source, f"{label_a} cell/source.py",
                           f"{label_b} cell/source.py"),
        datasets=changes(a.digests, b.digests),
        versions=changes(a.versions, b.versions),
        git=changes(_git(a), _git(b)),
        notebooks=notebooks,
    )


def format_value(value) -> str:
    """A value as a diff shows it: ``-`` for absent, numbers in full precision."""
    if value is MISSING:
        return "-"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def text(diff: RunDiff) -> str:
    """The diff as plain text, what ``nbtrack diff`` prints."""
    lines = [f"a: {diff.a}", f"b: {diff.b}"]
    if diff.same:
        return "\n".join([*lines, "", "no differences: same params, metrics, source, data, "
                                      "packages and commit"])
    for title, section in diff.sections:
        if not section:
            continue
        lines += ["", f"{title}:"]
        width = max(len(c.key) for c in section)
        for change in section:
            lines.append(f"  {change.key:<{width}}  {format_value(change.a)}  ->  "
                         f"{format_value(change.b)}")
    if diff.source:
        lines += ["", "cell source:", diff.source.rstrip("\n")]
    return "\n".join(lines)
