"""Reading runs back from MLflow, for the API, the board and the command line."""

from __future__ import annotations

from pathlib import Path

from nbtrack.config import ARTIFACTS_PROGRESS_BAR_ENV
from nbtrack.record import SYSTEM_PREFIX
from nbtrack.store.kernel_state import fluent_tracking_uri


def default_experiment() -> str:
    """The experiment tracked cells in the current folder go to when nothing else says."""
    from nbtrack.config import resolve_experiment

    return resolve_experiment(None, "", Path.cwd())


# How long a read waits for the kernel's queued runs to reach the store.
READ_WAIT_SECONDS = 30.0


def runs(experiment=None, filter=None, order_by=None, tracker=None, tracking_uri=None,
         missing_ok=False):
    """The experiment's runs as a DataFrame, as ``mlflow.search_runs`` returns them.

    ``experiment`` defaults to the one tracked cells in the current folder go to. With
    ``missing_ok``, an experiment that does not exist yet has no runs instead of being an error.
    """
    import mlflow

    from nbtrack.errors import NbtrackError

    _read_your_writes(tracker)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = _experiment(client, experiment, tracker, missing_ok)
    if found is None:
        import pandas as pd

        return pd.DataFrame()
    if isinstance(order_by, str):
        order_by = [order_by]
    from mlflow.exceptions import MlflowException

    try:
        with fluent_tracking_uri(tracking_uri):
            return mlflow.search_runs(
                experiment_ids=[found.experiment_id], filter_string=filter or "",
                order_by=order_by,
            )
    except MlflowException as error:
        if filter and error.error_code == "INVALID_PARAMETER_VALUE":
            raise NbtrackError(f"filter {filter!r} not understood: {error.message}") from None
        raise


def runs_page(experiment=None, filter=None, metric=None, ascending=False, top=50, tracker=None,
              tracking_uri=None, missing_ok=False, background=False, on_change=None):
    """The ``top`` runs ranked by ``metric``, read from the run index, ready for :func:`rank`.

    The same question as ``rank(runs(experiment, filter=filter), metric, ascending, top)``, with
    the same answer, without reading every run through MLflow each time: the experiment's
    :class:`nbtrack.store.index.RunIndex` is brought up to date from MLflow, then filtered (MLflow's
    filter syntax) and ranked in memory.

    Returns
    -------
    pandas.DataFrame
        The first ``top`` ranked runs in ``mlflow.search_runs``'s format, with a column for every
        metric the matching runs have. ``attrs["metric"]`` is the metric ranked by (the one most
        runs have when ``metric`` is None), ``attrs["matched"]`` how many runs matched, and
        ``attrs["filling"]`` True while a first read of the experiment goes on in the background
        (``background=True``): the page ranks the runs read so far, ``attrs["indexed"]`` of them,
        and ``on_change()`` is called as more arrive.

    """
    import mlflow

    from nbtrack.store import index as run_index

    _read_your_writes(tracker)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = _experiment(client, experiment, tracker, missing_ok)
    if found is None:
        import pandas as pd

        return pd.DataFrame()
    index = run_index.RunIndex.shared(client.tracking_uri, found.experiment_id)
    if on_change is not None:
        index.on_change(on_change)
    index.refresh(background=background)
    try:
        return _ranked_page(index, filter, metric, ascending, top)
    except ValueError:  # a row of the index file that no longer decodes: read every run again
        index.refresh(full=True)
        return _ranked_page(index, filter, metric, ascending, top)


def _ranked_page(index, filter, metric, ascending, top):
    from mlflow.exceptions import MlflowException

    from nbtrack.errors import NbtrackError
    from nbtrack.store import summaries

    try:
        matched = index.search(filter or None)
    except MlflowException as error:
        if filter and error.error_code == "INVALID_PARAMETER_VALUE":
            raise NbtrackError(f"filter {filter!r} not understood: {error.message}") from None
        raise
    counts = summaries.metric_counts(matched)
    keys = list(counts)
    metric = metric or summaries.default_metric(matched, counts)
    ranked = summaries.rank_by(matched, metric if metric in keys else None, ascending, top)
    table = summaries.to_frame(ranked, metrics=keys)
    table.attrs["metric"] = metric
    table.attrs["matched"] = len(matched)
    table.attrs["filling"] = index.filling
    table.attrs["indexed"] = len(index)
    return table


def _experiment(client, name: str | None, tracker, missing_ok: bool):
    """The experiment called ``name`` (default: where tracked cells here go); None when it does
    not exist and ``missing_ok``, else NbtrackError naming it.
    """
    from nbtrack.errors import NbtrackError

    if name is None:
        name = tracker.experiment_for(None, Path.cwd()) if tracker is not None else default_experiment()
    found = client.get_experiment_by_name(name)
    if found is None and not missing_ok:
        raise NbtrackError(
            f"no experiment named {name!r} in {client.tracking_uri}: track a cell into it "
            "first, or pass experiment=... (mlflow experiments search lists them)."
        )
    return found


def _read_your_writes(tracker) -> None:
    """Let the kernel's runs still on their way to the store get there (when writes are queued)."""
    flush = getattr(tracker, "flush", None)
    if flush is not None:
        flush(timeout=READ_WAIT_SECONDS)


def leaderboard(experiment=None, metric=None, ascending=False, top=50, tracker=None,
                tracking_uri=None, filter=None, models=True):
    """Rank an experiment's runs by a metric, as the board and ``nbtrack runs`` show them.

    Parameters
    ----------
    experiment
        Experiment name; default: the one tracked cells in the current folder go to.
    metric
        The metric to rank by; default: the metric most runs have.
    ascending
        Rank lowest first (for losses and errors).
    top
        How many runs to keep.
    tracker
        The kernel's tracker, for the default experiment.
    tracking_uri
        The store; default: MLflow's tracking URI.
    filter
        MLflow filter syntax, e.g. ``"params.C = '0.1'"``.
    models
        Add the ``models`` column (registered versions and aliases).

    Returns
    -------
    pandas.DataFrame
        One row a run: ``rank``, ``run``, ``status``, ``start_time``, ``notebook``, ``user``
        (``mlflow.user``), the metrics, the params whose values differ between the listed runs,
        ``models`` (registered versions made from the run's models, with their aliases:
        ``["iris v2 @champion"]``) and ``run_id``.

    """
    table = runs_page(experiment=experiment, filter=filter, metric=metric, ascending=ascending,
                      top=top, tracker=tracker, tracking_uri=tracking_uri)
    board = rank(table, metric=table.attrs.get("metric", metric), ascending=ascending, top=top)
    if models:
        add_model_versions(board, tracking_uri)
    return board


def add_model_versions(board, tracking_uri=None) -> dict:
    """Add the ``models`` column: each run's registered versions and their aliases.

    Returns the versions found, ``{run_id: [ModelVersion, ...]}``.
    """
    from nbtrack.store import registry

    versions = registry.versions_of_runs(list(board["run_id"]), tracking_uri) if len(board) else {}
    board["models"] = [
        [
            f"{v.name} v{v.version}" + "".join(f" @{a}" for a in sorted(v.aliases or []))
            for v in sorted(versions.get(run_id, []), key=lambda v: (v.name, int(v.version)))
        ]
        for run_id in board["run_id"]
    ]
    return versions


def rank(table, metric=None, ascending=False, top=50):
    """Rank a ``search_runs`` DataFrame (see :func:`leaderboard`)."""
    import pandas as pd

    if table.empty:
        empty = pd.DataFrame(columns=["rank", "run", "status", "start_time", "notebook", "run_id"])
        empty.attrs["metric"] = metric
        return empty
    metric_columns = [c for c in table.columns if c.startswith("metrics.")]
    if metric is None and metric_columns:
        counts = table[metric_columns].notna().sum()
        metric = sorted(metric_columns, key=lambda c: (-counts[c], c))[0][len("metrics."):]
    column = f"metrics.{metric}" if metric else None
    if column and column not in table.columns:
        from nbtrack.errors import NbtrackError

        known = ", ".join(c[len("metrics."):] for c in metric_columns) or "none yet"
        raise NbtrackError(f"no run has a metric {metric!r}; metrics here: {known}.")
    if column:
        table = table.sort_values(column, ascending=ascending, na_position="last", kind="stable")
    table = table.head(top).reset_index(drop=True)
    board = pd.DataFrame({
        "rank": range(1, len(table) + 1),
        "run": table.get("tags.mlflow.runName"),
        "status": table.get("status"),
        "start_time": table.get("start_time"),
        "notebook": table.get("tags.nbtrack.notebook"),
        "user": table.get("tags.mlflow.user"),  # whose run: on a team server, everyone's rank together
    })
    ordered = ([column] if column else []) + sorted(c for c in metric_columns if c != column)
    for name in ordered:
        board[name[len("metrics."):]] = table[name].values
    # Only params whose values differ between the runs that have them: constant ones are
    # noise, and so are the many defaults of an estimator that only some runs fit.
    for name in sorted(c for c in table.columns if c.startswith("params.")):
        if table[name].dropna().nunique() > 1:
            board[name] = table[name].values
    board["run_id"] = table["run_id"].values if "run_id" in table else None
    board.attrs["metric"] = metric
    return board


def _client(tracking_uri=None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def get_run(run_id: str, tracking_uri=None):
    """One run (``mlflow.entities.Run``); NbtrackError when there is none with that id."""
    from mlflow.exceptions import MlflowException

    from nbtrack.errors import NbtrackError

    client = _client(tracking_uri)
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise NbtrackError(f"no run with id {run_id!r} in {client.tracking_uri}.") from None


def metric_history(run_id: str, key: str, tracking_uri=None) -> list[tuple[int, float]]:
    """A metric's points as ``(step, value)``, in step order."""
    points = _client(tracking_uri).get_metric_history(run_id, key)
    return sorted((p.step, p.value) for p in points)


def figure_images(run_id: str, tracking_uri=None) -> list[tuple[str, bytes]]:
    """The PNG figures a run logged under ``figures/``, as ``(path, bytes)``."""
    import os

    client = _client(tracking_uri)
    found = []
    saved = os.environ.get(ARTIFACTS_PROGRESS_BAR_ENV)
    os.environ[ARTIFACTS_PROGRESS_BAR_ENV] = "false"  # no bars inside a board
    try:
        for item in client.list_artifacts(run_id, "figures"):
            if item.path.endswith(".png"):
                local = client.download_artifacts(run_id, item.path)
                found.append((item.path, Path(local).read_bytes()))
    finally:
        if saved is None:
            os.environ.pop(ARTIFACTS_PROGRESS_BAR_ENV, None)
        else:
            os.environ[ARTIFACTS_PROGRESS_BAR_ENV] = saved
    return found


def run_facts(run_id: str, tracking_uri=None):
    """A run's params, metrics, tags, datasets and lineage artifacts, as a
    :class:`nbtrack.record.RunFacts`; NbtrackError when there is no such run.

    Examples
    --------
    >>> run_facts("3f2a9c1b...").digests  # doctest: +SKIP
    {'X_train': '5b0e1a2c', 'y_train': '9d7f3a10'}

    """
    from nbtrack.record import DatasetRef, RunFacts

    run = get_run(run_id, tracking_uri)
    client = _client(tracking_uri)
    tags = dict(run.data.tags)
    datasets = []
    for item in run.inputs.dataset_inputs if run.inputs else []:
        context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), "")
        datasets.append(DatasetRef(item.dataset.name, item.dataset.digest, context,
                                   item.dataset.profile or ""))
    experiment = client.get_experiment(run.info.experiment_id).name
    notebook = None
    with _no_progress_bar():
        source = _artifact(client, run.info.run_id, "cell/source.py")
        history = _artifact(client, run.info.run_id, "lineage/history.py")
        try:
            listed = client.list_artifacts(run.info.run_id, "lineage")
        except Exception:  # no lineage folder on this run's artifact store
            listed = []
        snapshot = next((i.path for i in listed if i.path.endswith(".ipynb")), None)
        if snapshot is not None:
            notebook = _artifact(client, run.info.run_id, snapshot, binary=True)
    return RunFacts(
        run_id=run.info.run_id, name=tags.get("mlflow.runName", run.info.run_name or ""),
        experiment=experiment, status=run.info.status, params=dict(run.data.params),
        # What the model scored, not what the machine did meanwhile (system/...): compared by
        # diff and reproduce.
        metrics={k: v for k, v in run.data.metrics.items() if not k.startswith(SYSTEM_PREFIX)},
        tags=tags, datasets=tuple(datasets),
        source=source, history=history, notebook=notebook,
    )


def _artifact(client, run_id: str, path: str, binary: bool = False):
    """One artifact's content (text, or bytes), or None when the run has no such artifact."""
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="nbtrack-") as folder:
        try:
            local = Path(client.download_artifacts(run_id, path, folder))
        except (MlflowException, OSError):
            return None
        if not local.is_file():
            return None
        return local.read_bytes() if binary else local.read_text(errors="replace")


class _no_progress_bar:
    """MLflow draws a progress bar on downloads; not in a one-line command's output."""

    def __enter__(self):
        import os

        self.saved = os.environ.get(ARTIFACTS_PROGRESS_BAR_ENV)
        os.environ[ARTIFACTS_PROGRESS_BAR_ENV] = "false"

    def __exit__(self, *exc):
        import os

        if self.saved is None:
            os.environ.pop(ARTIFACTS_PROGRESS_BAR_ENV, None)
        else:
            os.environ[ARTIFACTS_PROGRESS_BAR_ENV] = self.saved


def runs_tagged(experiment: str, key: str, value: str, tracking_uri=None) -> list:
    """Runs of ``experiment`` whose tag ``key`` is ``value``, oldest first (``Run`` entities)."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], filter_string=f"tags.`{key}` = '{value}'",
                              order_by=["attributes.start_time ASC"])


def execution_metric(experiment: str, execution_id: str, metric: str,
                     tracking_uri: str | None = None) -> float | None:
    """The ``metric`` the runs of one ``nbtrack run`` execution logged: the value of the last
    run (in cell order) that has it; None when no run of it did.
    """
    from mlflow import MlflowClient

    from nbtrack.record import EXECUTION_TAG

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id],
                              filter_string=f"tags.`{EXECUTION_TAG}` = '{execution_id}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    values = [run.data.metrics[metric] for run in runs if metric in run.data.metrics]
    return values[-1] if values else None


def experiment_sweeps(experiment: str, sweep_id: str | None = None, tracking_uri: str | None = None):
    """The sweeps and searches of ``experiment`` (or the one ``sweep_id`` names), newest first:
    :class:`nbtrack.store.sweeps.Sweep` each.
    """
    from mlflow import MlflowClient

    from nbtrack.store.sweeps import sweeps_in

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return sweeps_in(client, found.experiment_id, sweep_id) if found is not None else []


def sweep_objective(experiment: str, sweep_id: str,
                    tracking_uri: str | None = None) -> tuple[str, bool] | None:
    """The objective a search ranked its trials by, and whether lower is better, from its parent
    run; None for a grid sweep (no objective) or a sweep nbtrack does not know.
    """
    sweeps = experiment_sweeps(experiment, sweep_id, tracking_uri)
    if not sweeps or sweeps[0].objective is None:
        return None
    return sweeps[0].objective, sweeps[0].minimize


def data_differs(run_a: str | None, run_b: str | None, tracking_uri=None) -> str:
    """Say how two runs' datasets differ ('' when they used the same data)."""
    if not run_a or not run_b:
        return ""
    digests = []
    for run_id in (run_a, run_b):
        inputs = get_run(run_id, tracking_uri).inputs.dataset_inputs
        digests.append({d.dataset.name: d.dataset.digest for d in inputs})
    a, b = digests
    changed = [n for n in sorted(set(a) & set(b)) if a[n] != b[n]]
    if changed:
        return "dataset digests differ for " + ", ".join(
            f"{n} ({a[n]} vs {b[n]})" for n in changed)
    if a and b and not set(a) & set(b):
        return "the two runs share no dataset"
    return ""
