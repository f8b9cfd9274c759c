"""Which Python values can be params or metrics, and how they are written as such."""

from __future__ import annotations

import math
import numbers
from typing import Any

SCALAR_TYPES = (bool, int, float, str, type(None))


# Array libraries whose 0-d arrays are numbers: read with .item(), which copies one number (from a
# GPU too) and needs no import of the library.
_ARRAY_MODULES = frozenset({"numpy", "torch", "jax", "jaxlib", "tensorflow"})


def _numpy_scalar(value: Any) -> Any:
    """Return the Python scalar inside a numpy scalar or a 0-d numpy array, torch tensor, jax or
    TensorFlow array; else the value itself.
    """
    module = type(value).__module__.split(".")[0]
    if module not in _ARRAY_MODULES or isinstance(value, type):
        return value
    try:
        shape = getattr(value, "shape", None)
        if shape is None or len(shape) != 0:
            return value
        if hasattr(value, "item"):
            return value.item()
        return value.numpy().item()  # a TensorFlow eager tensor
    except Exception:  # not a scalar after all, or an array that cannot be read here
        return value


def is_simple_scalar(value: Any) -> bool:
    """True for numbers, strings, bools and None (numpy scalars included)."""
    return isinstance(_numpy_scalar(value), SCALAR_TYPES)


def flatten_param(name: str, value: Any, max_items: int) -> dict[str, Any] | None:
    """Flatten a param-like value into ``{dotted.name: scalar or small list}``.

    Returns None when the value is not simple (an object, a long list, a nested list...).

    >>> flatten_param("cfg", {"lr": 0.1, "layers": [64, 32]}, 20)
    {'cfg.lr': 0.1, 'cfg.layers': [64, 32]}
    """
    value = _numpy_scalar(value)
    if isinstance(value, SCALAR_TYPES):
        return {name: value}
    if isinstance(value, (list, tuple)):
        items = [_numpy_scalar(v) for v in value]
        if len(items) <= max_items and all(isinstance(v, SCALAR_TYPES) for v in items):
            return {name: type(value)(items)}
        return None
    if isinstance(value, dict):
        if len(value) > max_items or not all(isinstance(k, (str, int)) for k in value):
            return None
        flat: dict[str, Any] = {}
        for key, item in value.items():
            inner = flatten_param(f"{name}.{key}", item, max_items)
            if inner is None:
                return None
            flat.update(inner)
        return flat
    return None


def param_text(value: Any) -> str:
    """Write a param value the way MLflow stores it: as text."""
    return str(_numpy_scalar(value))


def metric_number(value: Any) -> float | None:
    """Return the value as a float if it is a numeric scalar (not a bool), else None.

    NaN and infinities are returned as they are; the sanitizer decides what to do with them.
    """
    value = _numpy_scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def is_finite(number: float) -> bool:
    """True unless NaN or infinite."""
    return math.isfinite(number)
