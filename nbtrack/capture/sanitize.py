"""Make captured names and values acceptable to MLflow, saying what was changed or skipped.

The limits mirror ``mlflow.utils.validation`` (tests check they still match) so that capture can
apply them without importing MLflow.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable

from nbtrack.capture.values import is_finite
from nbtrack.record import Series

MAX_KEY_LENGTH = 250  # MAX_ENTITY_KEY_LENGTH
MAX_PARAM_VALUE_LENGTH = 6000  # MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE_LENGTH = 8000  # MAX_TAG_VAL_LENGTH
# MLflow accepts these characters in keys (colons too, but not on Windows: keep runs portable).
_BAD_KEY_CHARACTER = re.compile(r"[^/\w.\- ]")
TRUNCATION_MARK = "...[truncated by nbtrack]"

Warn = Callable[[str], None]


def key(name: str, kind: str, warn: Warn) -> str | None:
    """Return a key MLflow accepts for a param, metric or tag called ``name``, or None to skip it."""
    fixed = _BAD_KEY_CHARACTER.sub("_", str(name)).strip()
    fixed = re.sub(r"/+", "/", fixed).strip("/")
    while ".." in fixed:
        fixed = fixed.replace("..", ".")
    if len(fixed) > MAX_KEY_LENGTH:
        fixed = fixed[:MAX_KEY_LENGTH]
    if not fixed or fixed in {".", "_"} or posixpath.normpath(fixed) != fixed:
        warn(f"{kind} {name!r} not logged: MLflow cannot store that name.")
        return None
    if fixed != name:
        warn(f"{kind} {name!r} logged as {fixed!r}: MLflow does not accept some of its characters.")
    return fixed


def text(value: str, limit: int, what: str, warn: Warn) -> str:
    """Truncate text to MLflow's length limit, with a mark and a warning naming ``what``."""
    if len(value) <= limit:
        return value
    warn(f"{what} is {len(value)} characters, over MLflow's limit of {limit}: truncated.")
    return value[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK


def params(raw: dict[str, str], warn: Warn) -> dict[str, str]:
    """Sanitize param keys and values."""
    clean: dict[str, str] = {}
    for name, value in raw.items():
        fixed = key(name, "param", warn)
        if fixed is None:
            continue
        value = _printable(value)
        clean[fixed] = text(value, MAX_PARAM_VALUE_LENGTH, f"param {name!r}", warn)
    return clean


def metrics(raw: dict[str, float], warn: Warn) -> dict[str, float]:
    """Sanitize metric keys; skip NaN and infinite values."""
    clean: dict[str, float] = {}
    for name, value in raw.items():
        fixed = key(name, "metric", warn)
        if fixed is None:
            continue
        if not is_finite(value):
            warn(f"metric {name!r} not logged: its value is {value}.")
            continue
        clean[fixed] = value
    return clean


def series(raw: list[Series], warn: Warn) -> list[Series]:
    """Sanitize series keys; drop NaN and infinite points, saying how many."""
    clean = []
    for one in raw:
        fixed = key(one.key, "metric", warn)
        if fixed is None:
            continue
        finite = [i for i, value in enumerate(one.values) if is_finite(value)]
        if len(finite) < len(one.values):
            warn(f"metric {one.key!r}: {len(one.values) - len(finite)} NaN or infinite points "
                 "not logged.")
            kept = Series(fixed)
            for i in finite:
                kept.add(one.values[i], one.steps[i], one.timestamps_ms[i])
            one = kept
        elif fixed != one.key:
            one = Series(fixed, one.steps, one.values, one.timestamps_ms)
        if len(one):
            clean.append(one)
    return clean


def tags(raw: dict[str, str], warn: Warn) -> dict[str, str]:
    """Sanitize tag keys and values."""
    clean: dict[str, str] = {}
    for name, value in raw.items():
        fixed = key(name, "tag", warn)
        if fixed is None:
            continue
        clean[fixed] = text(_printable(str(value)), MAX_TAG_VALUE_LENGTH, f"tag {name!r}", warn)
    return clean


def _printable(value: str) -> str:
    # Control characters other than newline and tab make values unreadable in every MLflow view;
    # lone surrogates cannot be encoded for the store at all.
    if value.replace("\n", "").replace("\t", "").isprintable():  # the common case, at C speed
        return value
    cleaned = "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in value)
    return cleaned.encode("utf-8", "replace").decode("utf-8")
