"""Fitted scikit-learn estimators: their hyperparameters and a sample of what they were fitted on.

scikit-learn is never imported here unless the user's code already did.
"""

from __future__ import annotations

import sys
from typing import Any

from nbtrack.capture.values import is_simple_scalar

INPUT_EXAMPLE_ROWS = 5


def is_estimator(value: Any) -> bool:
    """True for scikit-learn estimators (and pipelines, and third-party subclasses)."""
    base = sys.modules.get("sklearn.base")
    if base is None or isinstance(value, type):
        return False
    return isinstance(value, base.BaseEstimator)


def is_fitted(estimator: Any) -> bool:
    """True when scikit-learn considers the estimator fitted."""
    validation = sys.modules.get("sklearn.utils.validation")
    if validation is None:
        return False
    try:
        validation.check_is_fitted(estimator)
    except Exception:  # NotFittedError, or an estimator check_is_fitted cannot judge
        return False
    return True


def looks_like_model(value: Any) -> str | None:
    """Name the kind of a non-scikit-learn model object (for a 'not logged' note), else None."""
    cls = type(value)
    module = cls.__module__.split(".")[0]
    # torch, Keras and the boosters have flavors (capture/frameworks.py); TensorFlow's own
    # modules do not.
    if module == "tensorflow":
        if callable(getattr(value, "predict", None)) or callable(getattr(value, "forward", None)):
            return f"{cls.__module__}.{cls.__qualname__}"
    return None


def hyperparameters(name: str, estimator: Any) -> dict[str, Any]:
    """The estimator's simple ``get_params()`` values, prefixed with its variable's name.

    >>> hyperparameters("clf", LogisticRegression(C=0.5))["clf.C"]  # doctest: +SKIP
    0.5
    """
    try:
        params = estimator.get_params(deep=True)
    except Exception:  # a broken get_params of a third-party estimator
        return {}
    return {f"{name}.{key}": value for key, value in params.items() if is_simple_scalar(value)}


def input_example(data: Any) -> Any:
    """The first rows of the data given to ``fit``, or None when it is not a frame or array."""
    if data is None:
        return None
    kind = type(data).__module__.split(".")[0]
    try:
        if kind == "pandas" and hasattr(data, "head"):
            return data.head(INPUT_EXAMPLE_ROWS)
        if kind == "numpy" and getattr(data, "ndim", 0) >= 1:
            return data[:INPUT_EXAMPLE_ROWS]
    except Exception:  # an exotic frame type; the model is still logged, without an example
        return None
    return None
