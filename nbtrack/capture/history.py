"""A run's execution history: parse it, find hidden notebook state in it, cut it down to what the
tracked cell depends on.

The history is what the kernel actually ran before the tracked cell (``lineage/history.py``,
entries headed ``# In[n]:``); the saved notebook is what a reader sees. Where they disagree, the
saved notebook cannot rebuild the run. Plain Python and AST only: no IPython, no MLflow.
"""

from __future__ import annotations

import ast
import builtins
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nbtrack.capture.source import SHELL_NAMES, names

OUT_OF_ORDER, EDITED, UNDEFINED = "out-of-order", "edited", "undefined"

_HEADER = re.compile(r"^# In\[(\d+)\]:$")
# Line magics that set the kernel up rather than compute anything: --minimal keeps them.
_SETUP_MAGICS = ("%load_ext", "%reload_ext", "%matplotlib", "%config", "%track_config", "%env",
                 "%autoreload", "%pip", "%conda")


@dataclass(frozen=True)
class Entry:
    """One input the kernel ran: its execution count and its source as typed."""

    count: int
    source: str

    @property
    def code(self) -> str:
        """The entry as plain Python (see :func:`python_code`)."""
        return python_code(self.source)


@dataclass(frozen=True)
class Finding:
    """One sign of hidden state: ``kind`` is out-of-order, edited or undefined."""

    kind: str
    message: str
    count: int | None = None  # the history entry it concerns, when one


def parse(text: str) -> list[Entry]:
    r"""Split a ``lineage/history.py`` text into its entries, in the order they ran.

    >>> parse("# In[1]:\nx = 1\n\n# In[3]:\ny = x\n")
    [Entry(count=1, source='x = 1'), Entry(count=3, source='y = x')]
    """
    entries: list[Entry] = []
    count, lines = None, []
    for line in text.splitlines():
        match = _HEADER.match(line)
        if match:
            if count is not None:
                entries.append(Entry(count, "\n".join(lines).strip("\n")))
            count, lines = int(match.group(1)), []
        elif count is not None:
            lines.append(line)
    if count is not None:
        entries.append(Entry(count, "\n".join(lines).strip("\n")))
    return entries


@functools.lru_cache(maxsize=4096)  # every tracked cell reads the whole history again
def python_code(source: str) -> str:
    r"""The Python in a cell as typed: the ``%%track`` line, line magics and shell escapes dropped.

    Cells under another cell magic (``%%bash``, ``%%capture``...) hold no notebook-level Python
    nbtrack can analyze: they give ``""``, as does source that does not parse.

    >>> python_code("%%track -n fit\n%matplotlib inline\nC = 0.1")
    'C = 0.1'
    """
    lines = source.strip("\n").splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        if not lines[0].lstrip().startswith("%%track"):
            return ""
        lines = lines[1:]
    kept = [line for line in lines if not line.lstrip().startswith(("%", "!"))]
    code = "\n".join(kept)
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return ""
    return code


def is_injected_parameters(source: str) -> bool:
    """Whether a cell is the one papermill (and so ``nbtrack run``) injects: ``# Parameters``."""
    return source.lstrip().startswith(("# Parameters", "# Injected parameters"))


def is_setup(source: str) -> bool:
    """Whether a cell only sets the kernel up (``%load_ext nbtrack``, ``%matplotlib inline``)."""
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    return bool(lines) and all(line.startswith(_SETUP_MAGICS) for line in lines)


def _provided(name: str) -> bool:
    return name in SHELL_NAMES or name.startswith("_") or hasattr(builtins, name)


def find(entries: Sequence[Entry], saved: Sequence[tuple[int, str]] | None) -> list[Finding]:
    """Signs of hidden state in a history whose last entry is the tracked cell.

    Parameters
    ----------
    entries
        The history, in the order it ran; the last entry is the tracked cell.
    saved
        The saved notebook's code cells as ``(cell number, source)``, numbered from 1 among all
        its cells; None when the notebook could not be read (then only names are checked,
        against the history).

    Returns
    -------
    list of Finding
        Cells run out of order, cells edited (or deleted) after they ran, and names the tracked
        cell reads that no saved cell defines. Empty when the saved notebook, run top to bottom,
        does what the history did. papermill's injected parameters cell is not hidden state.

    """
    entries = [e for e in entries if e.source.strip()]
    if not entries:
        return []
    findings: list[Finding] = []
    if saved is not None:
        findings += _order_and_edits(entries, saved)
    findings += _undefined(entries, saved)
    return findings


def _order_and_edits(entries: Sequence[Entry], saved: Sequence[tuple[int, str]]) -> list[Finding]:
    findings: list[Finding] = []
    furthest: tuple[int, int] | None = None  # (index in saved, count): furthest down so far
    for position, entry in enumerate(entries):
        if is_injected_parameters(entry.source):
            continue
        text = entry.source.strip()
        matches = [i for i, (_, source) in enumerate(saved) if source.strip() == text]
        tracked = position == len(entries) - 1
        if not matches:
            what = "the tracked cell" if tracked else f"In[{entry.count}]"
            findings.append(Finding(EDITED, f"{what} ran code that no cell of the saved notebook "
                                            "holds (edited or deleted after it ran, or not saved)",
                                    entry.count))
            continue
        later = [i for i in matches if furthest is None or i > furthest[0]]
        if later:
            furthest = (later[0], entry.count)
            continue
        # Every cell holding this code is above (or is) the furthest cell run so far: a re-run.
        index = max(i for i in matches if i <= furthest[0])
        if index == furthest[0]:
            what = f"again, after In[{furthest[1]}]"
        else:
            what = f"after In[{furthest[1]}] had run cell {saved[furthest[0]][0]} below it"
        findings.append(Finding(
            OUT_OF_ORDER, f"cells ran out of order: In[{entry.count}] ran cell "
                          f"{saved[index][0]} of the saved notebook {what}", entry.count))
    return findings


def _undefined(entries: Sequence[Entry], saved: Sequence[tuple[int, str]] | None) -> list[Finding]:
    tracked = entries[-1]
    earlier = entries[:-1]
    if saved is not None:
        sources = [source for _, source in saved]
        sources += [e.source for e in earlier if is_injected_parameters(e.source)]
        where = "no cell of the saved notebook defines"
    else:
        sources = [e.source for e in earlier]
        where = "nothing in the kernel's history defines"
    defined: set[str] = set()
    for source in sources:
        defined |= names(python_code(source)).defines
    findings = []
    for name in names(tracked.code).reads:
        if _provided(name) or name in defined:
            continue
        origin = next((e for e in reversed(earlier) if name in names(e.code).defines), None)
        note = f" (In[{origin.count}] of the history did)" if origin and saved is not None else ""
        findings.append(Finding(UNDEFINED, f"the tracked cell reads {name!r}, which {where}{note}",
                                origin.count if origin else None))
    return findings


# A long session can hold hundreds of cells the saved notebook does not: the summary line and
# its tag (8,000 characters at most) name the first few of each kind and count the rest.
SHOWN_PER_KIND = 5
_MORE = {EDITED: "cells ran code that no cell of the saved notebook holds",
         OUT_OF_ORDER: "cells ran out of order", UNDEFINED: "names no cell defines are read"}


def summary(findings: Sequence[Finding]) -> str:
    """One line for a run's tag and summary: the findings joined with ``; ``, at most
    :data:`SHOWN_PER_KIND` of each kind, then how many more of it there are.
    """
    shown: list[str] = []
    seen: dict[str, int] = {}
    for finding in findings:
        seen[finding.kind] = seen.get(finding.kind, 0) + 1
        if seen[finding.kind] <= SHOWN_PER_KIND:
            shown.append(finding.message)
    shown += [f"{count - SHOWN_PER_KIND} more {_MORE.get(kind, kind)}"
              for kind, count in seen.items() if count > SHOWN_PER_KIND]
    return "; ".join(shown)


def minimal(entries: Sequence[Entry]) -> list[Entry]:
    """The entries the last one (the tracked cell) depends on, in their order.

    Follows the names the tracked cell reads back through the latest entries that bound them
    (imports included), then what those entries read, and so on; kernel set-up cells
    (``%load_ext``, ``%matplotlib``...) and papermill's injected parameters are kept.
    An entry that changes an object in place (``clf.fit(X)``) counts as defining it.

    >>> h = [Entry(1, "a = 1"), Entry(2, "b = 2"), Entry(3, "c = a + 1"), Entry(4, "print(c)")]
    >>> [e.count for e in minimal(h)]
    [1, 3, 4]
    """
    if not entries:
        return []
    *earlier, tracked = entries
    needed = set(names(tracked.code).reads)
    keep = [tracked]
    for entry in reversed(earlier):
        entry_names = names(entry.code)
        supplied = needed & entry_names.defines
        if not supplied and not (is_setup(entry.source) or is_injected_parameters(entry.source)):
            continue
        keep.append(entry)
        needed -= supplied
        needed |= set(entry_names.reads)
    return list(reversed(keep))
