"""nbtrack: every ``%%track`` cell of a notebook becomes a complete MLflow run.

In a notebook::

    %load_ext nbtrack

    %%track
    C = 0.1
    clf = LogisticRegression(C=C).fit(X_train, y_train)
    val_acc = clf.score(X_test, y_test)

Importing nbtrack is cheap: MLflow, pandas and IPython's magics load only when needed.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "load_ipython_extension",
    "unload_ipython_extension",
    "log_metric",
    "log_param",
    "log_figure",
    "last_run",
    "flush",
    "runs",
    "leaderboard",
    "load",
    "unrecorded",
    "__version__",
]


def load_ipython_extension(ipython) -> None:
    """Register ``%%track`` and ``%track_config`` (``%load_ext nbtrack``)."""
    from nbtrack.ipython import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    """Remove nbtrack's magics' hooks (``%unload_ext nbtrack``, ``%reload_ext nbtrack``)."""
    from nbtrack.ipython import unload

    unload(ipython)


# The kernel's tracker, which nbtrack.tracker.set_current installs under "tracker". It lives here,
# not in nbtrack.tracker, so that log_metric, called in tight training loops, reads it without an
# import per call (that import was a third of the call's cost). `%reload_ext nbtrack` re-runs this
# module in its old namespace while nbtrack.tracker keeps its reference: the dict must survive that.
KERNEL: dict[str, Any] = globals().get("KERNEL", {})


def _tracker():
    return KERNEL.get("tracker")


def log_metric(key: str, value: float, step: int | None = None) -> None:
    """Log one point of a metric series in the running ``%%track`` cell.

    Parameters
    ----------
    key
        Metric name, e.g. ``"train_loss"``.
    value
        A number (Python or numpy).
    step
        The point's step; default: one more than the key's last step in this run.

    Examples
    --------
    >>> for epoch in range(epochs):  # doctest: +SKIP
    ...     nbtrack.log_metric("train_loss", loss, step=epoch)

    """
    tracker = KERNEL.get("tracker")
    if tracker is None:
        from nbtrack import display

        display.warn(f"nbtrack.log_metric({key!r}): load nbtrack with %load_ext nbtrack first.")
        return
    tracker.log_metric(key, value, step)


def log_param(key: str, value: Any) -> None:
    """Log a param in the running ``%%track`` cell (it wins over a detected one).

    Examples
    --------
    >>> nbtrack.log_param("data_version", "2024-06")  # doctest: +SKIP

    """
    tracker = _tracker()
    if tracker is None:
        from nbtrack import display

        display.warn(f"nbtrack.log_param({key!r}): load nbtrack with %load_ext nbtrack first.")
        return
    tracker.log_param(key, value)


def log_figure(figure: Any, name: str | None = None) -> None:
    """Log a matplotlib figure, as it looks now, in the running ``%%track`` cell.

    Examples
    --------
    >>> nbtrack.log_figure(fig, "calibration")  # doctest: +SKIP

    """
    tracker = _tracker()
    if tracker is None:
        from nbtrack import display

        display.warn("nbtrack.log_figure: load nbtrack with %load_ext nbtrack first.")
        return
    tracker.log_figure(figure, name)


def last_run() -> str | None:
    """The run id of the last tracked cell of this kernel, or None.

    Examples
    --------
    >>> mlflow.get_run(nbtrack.last_run()).data.metrics  # doctest: +SKIP

    """
    tracker = _tracker()
    if tracker is None:
        return None
    tracker.flush()
    return tracker.last_run_id


def flush(timeout: float | None = None) -> bool:
    """Wait until the runs of this kernel's tracked cells are in the store.

    Tracked cells hand their runs to a background writer and return at once; reading through
    nbtrack (``runs()``, the board, ``last_run()``) waits for it by itself. Call this before
    reading with MLflow directly. Returns False if ``timeout`` seconds passed first (the runs
    then wait in the journal; see ``nbtrack sync``).
    """
    tracker = _tracker()
    return True if tracker is None else tracker.flush(timeout)


def unrecorded() -> list:
    """Records of this kernel's tracked cells the store has not accepted (yet): they wait in
    the journal and are written when it answers. Waits a few seconds for the writer first.
    """
    tracker = _tracker()
    if tracker is None:
        return []
    tracker.flush(timeout=5)
    return tracker.waiting_records()


def runs(experiment: str | None = None, filter: str | None = None, order_by=None):
    """The experiment's runs as a pandas DataFrame (``mlflow.search_runs`` columns).

    Parameters
    ----------
    experiment
        Experiment name; default: the one tracked cells here go to.
    filter
        MLflow filter syntax, e.g. ``"metrics.val_auc > 0.9 and params.C = '0.1'"``.
    order_by
        MLflow order clauses, e.g. ``["metrics.val_auc DESC"]``.

    Examples
    --------
    >>> nbtrack.runs(order_by=["metrics.val_auc DESC"]).head()  # doctest: +SKIP

    """
    from nbtrack.store import query

    return query.runs(experiment=experiment, filter=filter, order_by=order_by, tracker=_tracker())


def leaderboard(experiment: str | None = None, metric: str | None = None, ascending: bool = False,
                top: int = 50, sweep: str | None = None):
    """The leaderboard widget: runs ranked by ``metric``, with Register and Set champion;
    ``sweep`` (an id from ``nbtrack run``) shows one sweep's runs, its best trial marked.

    Examples
    --------
    >>> board = nbtrack.leaderboard(metric="val_auc")  # doctest: +SKIP
    >>> board  # shows it  # doctest: +SKIP
    >>> nbtrack.leaderboard(sweep="3f2a9c1d0b7e")  # one search, ranked by its objective  # doctest: +SKIP

    """
    tracker = _tracker()
    if tracker is None:  # nbtrack not loaded in this kernel: a board of the store as it is
        from nbtrack.tracker import Tracker

        tracker = Tracker()
    return tracker.leaderboard(experiment, metric=metric, ascending=ascending, top=top,
                               sweep=sweep)


def load(reference: str):
    """Load a logged model into the notebook: from a run id (its last logged model) or a
    ``models:/`` URI. A scikit-learn model comes back as the fitted estimator itself, other
    flavors as MLflow's pyfunc model.

    Parameters
    ----------
    reference
        A run id, ``runs:/RUN_ID/PATH``, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a
        logged model's ``models:/m-...``.

    Examples
    --------
    >>> clf = nbtrack.load("models:/invoice-classifier@champion")  # doctest: +SKIP
    >>> clf.predict_proba(X_test)[:, 1]  # doctest: +SKIP

    """
    from nbtrack.store import registry

    return registry.load_model(reference)
