"""Upstream params: the simple values of earlier cells that a tracked cell's inputs were made from.

A cell that trains on ``X_train`` depends on the ``seed`` an earlier cell split the data with, though
it never reads ``seed`` itself. Following the kernel's history back from the names the tracked cell
reads finds such values; the run records them beside the cell's own params. Plain Python and AST
(through :mod:`nbtrack.capture.source`): no IPython, no MLflow.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nbtrack.capture.history import python_code
from nbtrack.capture.secrets import is_secret_name
from nbtrack.capture.source import is_shell_name, statement_names
from nbtrack.capture.values import flatten_param

# How far back the walk looks: a long session must not make every tracked cell slow.
MAX_HISTORY_ENTRIES = 200


def upstream_params(history: Sequence[tuple[int, str]], read_names: Iterable[str],
                    namespace: Mapping[str, Any], max_items: int, *,
                    bound_names: Iterable[str] = ()) -> dict[str, Any]:
    r"""Simple values of earlier cells that the names a tracked cell reads were made from.

    Follows each name the tracked cell reads back to the latest statement of the history that
    bound (or changed) it, then what that statement read, and so on. Dependencies are per
    top-level statement: in ``a = f(seed); b = g(other)`` only ``a`` depends on ``seed``; a
    compound statement (a ``for`` loop, a ``with`` block) counts as one.

    Parameters
    ----------
    history
        The cells the kernel ran before the tracked cell as ``(execution count, source)``, oldest
        first; as typed (``%%track``, ``%matplotlib``) or as IPython transformed them
        (``get_ipython().run_line_magic(...)``). Only the last :data:`MAX_HISTORY_ENTRIES` are
        followed; cells that do not parse, or run under another cell magic, are skipped.
    read_names
        The names the tracked cell reads from earlier cells (``CellSyntax.read_names``).
    namespace
        The user namespace, where the values are taken from.
    max_items
        The longest list or dict that is still a param (see ``values.flatten_param``).
    bound_names
        The names the tracked cell binds itself: when the namespace is read after the cell
        ran, their values are the cell's, not those its inputs were made from.

    Returns
    -------
    dict
        ``{name: value}``, flattened (a dict gives dotted keys), in the order the history
        defined them. Left out: names the tracked cell reads itself (they are its own params),
        values that are not simple, shell-owned and secret names, names not in ``namespace``, and
        names rebound after the statement the walk reached (their value now is not the one used).

    Examples
    --------
    >>> history = [(1, "seed = 7\nlr = 0.1"), (2, "X = make(seed)")]
    >>> upstream_params(history, ["X", "lr"], {"seed": 7, "lr": 0.1, "X": object()}, 20)
    {'seed': 7}

    """
    statements = [names for _, source in history[-MAX_HISTORY_ENTRIES:]
                  for names in statement_names(python_code(source))]
    latest: dict[str, int] = {}  # name -> index of the last statement that binds or changes it
    for index, names in enumerate(statements):
        latest.update(dict.fromkeys(names.defines, index))
    read = set(read_names)

    def followed(names) -> set[str]:
        # A module or class is not made from the cell's values: `plt.plot(range(epochs))` changes
        # plt as far as the syntax shows, but no figure the tracked cell draws is made from epochs.
        return {name for name in names
                if not isinstance(namespace.get(name), (types.ModuleType, type))}

    needed = followed(read)
    found: dict[str, int] = {}  # name -> index of the statement the walk took it from
    for index in range(len(statements) - 1, -1, -1):
        supplied = needed & statements[index].defines
        if not supplied:
            continue
        for name in supplied:
            if latest[name] == index:
                found.setdefault(name, index)
        needed -= supplied
        needed |= followed(statements[index].reads)
    skip = read | set(bound_names)
    params: dict[str, Any] = {}
    for name in sorted(found, key=lambda n: (found[n], n)):
        if name in skip or is_shell_name(name) or is_secret_name(name) or name not in namespace:
            continue
        flat = flatten_param(name, namespace[name], max_items)
        if flat is not None:
            params.update((key, value) for key, value in flat.items() if not is_secret_name(key))
    return params
