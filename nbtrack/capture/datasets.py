"""DataFrames and arrays a tracked cell read or bound: the data a run used."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nbtrack.record import DataCapture

MAX_DATASETS = 20


def is_dataset(value: Any) -> bool:
    """True for pandas DataFrames and Series and for numpy arrays with at least one element."""
    cls = type(value)
    module = cls.__module__.split(".")[0]
    if module == "pandas":
        return cls.__name__ in {"DataFrame", "Series"}
    if module == "numpy" and cls.__name__ == "ndarray":
        return value.ndim >= 1 and value.size > 0
    return False


def collect(
    names: Iterable[tuple[str, str]], namespace: Mapping[str, Any]
) -> tuple[list[DataCapture], int]:
    """Return the datasets among ``(name, context)`` pairs, each object once, and how many were
    left out past :data:`MAX_DATASETS`.
    """
    found: list[DataCapture] = []
    seen: set[int] = set()
    skipped = 0
    for name, context in names:
        value = namespace.get(name)
        if id(value) in seen or name.startswith("_") or not is_dataset(value):
            continue
        seen.add(id(value))
        if len(found) >= MAX_DATASETS:
            skipped += 1
            continue
        found.append(DataCapture(name=name, data=value, context=context))
    return found, skipped
