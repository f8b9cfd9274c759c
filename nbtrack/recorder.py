"""The only code that writes runs to MLflow.

A :class:`~nbtrack.record.CellRecord` becomes one MLflow run: params, metrics and tags in batches,
artifacts in one upload, datasets as run inputs, models with MLflow's sklearn flavor. Each part that
fails is reported as a problem and the rest is still written; a run the store does not accept at all
comes back with ``run_id=None`` so the caller can keep the record.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from nbtrack import registry
from nbtrack.display import short_error as _short
from nbtrack.errors import StoreError
from nbtrack.record import CellRecord, RunOutcome

# MLflow's per-call limits for log_batch (mlflow.utils.validation).
PARAMS_TAGS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


class Recorder:
    """Writes records to the MLflow store at ``tracking_uri`` (default: MLflow's own default)."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self._tracking_uri = tracking_uri
        self._experiment_ids: dict[str, str] = {}
        self._client = None

    @property
    def tracking_uri(self) -> str:
        """Where runs go: the URI given, else ``MLFLOW_TRACKING_URI``, else MLflow's default."""
        if self._tracking_uri:
            return self._tracking_uri
        import mlflow

        return mlflow.get_tracking_uri()

    @property
    def client(self):
        """An ``MlflowClient`` for this store."""
        from mlflow import MlflowClient

        uri = self.tracking_uri
        if self._client is None or self._client.tracking_uri != uri:
            self._client = MlflowClient(tracking_uri=uri)
            self._experiment_ids.clear()
        return self._client

    def experiment_id(self, name: str) -> str:
        """The id of the experiment called ``name``, created if it does not exist yet."""
        if name in self._experiment_ids:
            return self._experiment_ids[name]
        client = self.client
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            from mlflow.exceptions import MlflowException

            try:
                experiment_id = client.create_experiment(name)
            except MlflowException:
                # Another process created it between our look and our create.
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        elif experiment.lifecycle_stage == "deleted":
            raise StoreError(
                f"experiment {name!r} is deleted; restore it with `mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}` or track into another one with -e."
            )
        else:
            experiment_id = experiment.experiment_id
        self._experiment_ids[name] = experiment_id
        return experiment_id

    def open_run(self, experiment: str, run_name: str, start_time_ms: int,
                 tags: dict[str, str] | None = None, params: dict[str, str] | None = None) -> str:
        """Create a run and make it MLflow's active run, so the cell's own ``mlflow.log_*`` calls
        land in it. :meth:`write` finishes it.
        """
        import mlflow

        with quiet_mlflow():
            run = self.client.create_run(
                self.experiment_id(experiment), start_time=start_time_ms, run_name=run_name,
                tags=tags,
            )
        run_id = run.info.run_id
        if params:
            from mlflow.entities import Param

            with quiet_mlflow():
                self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        # A run left active by an earlier cell's own mlflow.start_run() stays as it was: ours goes
        # on top of it instead of raising MLflow's "run already active" error.
        with _experiment_of(run.info.experiment_id):
            mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
        return run_id

    def write(self, record: CellRecord) -> RunOutcome:
        """Write one record as one run. Never raises: what fails is listed in ``problems``."""
        with quiet_mlflow():
            return self._write(record)

    def _write(self, record: CellRecord) -> RunOutcome:
        problems: list[str] = []
        uri = "<unknown store>"
        try:
            uri = self.tracking_uri
            client = self.client
            run_id = record.run_id
            if run_id is None:
                run_id = client.create_run(
                    self.experiment_id(record.experiment),
                    start_time=record.start_time_ms,
                    run_name=record.run_name,
                ).info.run_id
        except Exception as error:
            return RunOutcome(
                run_id=None,
                experiment=record.experiment,
                tracking_uri=uri,
                problems=(
                    f"run '{record.run_name}' not recorded: the MLflow store at {uri} did not "
                    f"accept it ({_short(error)}).",
                ),
            )

        def attempt(what: str, step) -> object:
            try:
                return step()
            except Exception as error:
                problems.append(f"{what} of run '{record.run_name}' not recorded: {_short(error)}")
                return None

        attempt("params, metrics and tags", lambda: self._log_values(client, run_id, record))
        if record.artifacts:
            attempt("artifacts", lambda: self._log_artifacts(client, run_id, record))
        for data in record.datasets:
            attempt(f"dataset {data.name!r}", lambda data=data: self._log_dataset(client, run_id, data))
        model_uris: dict[str, str] = {}
        if record.models:
            model_uris = attempt("models", lambda: self._log_models(run_id, record, problems)) or {}
        registered = None
        if record.register_as:
            registered = attempt(
                f"registration as {record.register_as!r}",
                lambda: self._register(record, model_uris, run_id, problems),
            )
        attempt("run status", lambda: self._finish(client, run_id, record))
        return RunOutcome(
            run_id=run_id,
            experiment=record.experiment,
            tracking_uri=uri,
            model_uris=model_uris,
            registered=registered,
            problems=tuple(problems),
        )

    def execution_runs(self, experiment: str, execution_id: str) -> list:
        """The runs one batch execution made (tag ``nbtrack.execution``)."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return self.client.search_runs(
            [found.experiment_id], filter_string=f"tags.`nbtrack.execution` = '{execution_id}'"
        )

    def attach_to_execution(self, experiment: str, execution_id: str, path: Path,
                            folder: str) -> int:
        """Log a file (the executed notebook) with every run of a batch execution."""
        with quiet_mlflow():
            runs = self.execution_runs(experiment, execution_id)
            for run in runs:
                self.client.log_artifact(run.info.run_id, str(path), folder)
        return len(runs)

    def end_running_runs(self, experiment: str, execution_id: str, reason: str) -> int:
        """End the runs a dead kernel left RUNNING as KILLED, saying why in a tag."""
        with quiet_mlflow():
            runs = [r for r in self.execution_runs(experiment, execution_id)
                    if r.info.status == "RUNNING"]
            for run in runs:
                self.client.set_tag(run.info.run_id, "nbtrack.killed_reason", reason[:500])
                self.client.set_terminated(run.info.run_id, status="KILLED")
        return len(runs)

    # -- the parts of a run ------------------------------------------------------------------

    def _log_values(self, client, run_id: str, record: CellRecord) -> None:
        from mlflow.entities import Metric, Param, RunTag

        params = dict(record.params)
        if record.run_id is not None:
            # The cell's own mlflow.log_param calls went first; MLflow refuses to change a param.
            existing = client.get_run(run_id).data.params
            for key in [k for k in params if k in existing]:
                if existing[key] != params[key]:
                    del params[key]
        metrics = [
            Metric(key, value, record.end_time_ms, 0) for key, value in record.metrics.items()
        ]
        metrics += [Metric(p.key, p.value, p.timestamp_ms, p.step) for p in record.series]
        param_entities = [Param(k, v) for k, v in params.items()]
        tags = [RunTag(k, v) for k, v in record.tags.items()]
        for start in range(0, max(len(param_entities), len(tags), 1), PARAMS_TAGS_PER_BATCH):
            client.log_batch(
                run_id,
                params=param_entities[start : start + PARAMS_TAGS_PER_BATCH],
                tags=tags[start : start + PARAMS_TAGS_PER_BATCH],
            )
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + METRICS_PER_BATCH])

    def _log_artifacts(self, client, run_id: str, record: CellRecord) -> None:
        with tempfile.TemporaryDirectory(prefix="nbtrack-") as folder:
            for artifact in record.artifacts:
                target = Path(folder, *artifact.path.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(artifact.content)
            client.log_artifacts(run_id, folder)

    def _log_dataset(self, client, run_id: str, data) -> None:
        import mlflow.data
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        value = data.data
        if type(value).__name__ == "Series":
            value = value.to_frame()
        if type(value).__module__.split(".")[0] == "pandas":
            dataset = mlflow.data.from_pandas(value, name=data.name)
        else:
            dataset = mlflow.data.from_numpy(value, name=data.name)
        entity = Dataset(**dataset.to_dict())
        client.log_inputs(
            run_id, datasets=[DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, data.context)])]
        )

    def _log_models(self, run_id: str, record: CellRecord, problems: list[str]) -> dict[str, str]:
        import mlflow
        import mlflow.sklearn

        uris: dict[str, str] = {}
        # MLflow saves scikit-learn models with skops: loading them elsewhere needs it too.
        requirements = mlflow.sklearn.get_default_pip_requirements(include_skops=True)
        with _active_run(run_id):
            for model in record.models:
                try:
                    info = mlflow.sklearn.log_model(
                        model.estimator,
                        name=model.name,
                        input_example=model.input_example,
                        # Inferring requirements starts a subprocess that takes seconds.
                        pip_requirements=requirements,
                        skops_trusted_types=_trusted_types(model.estimator),
                    )
                except Exception as error:
                    problems.append(f"model {model.name!r} not logged: {_short(error)}")
                    continue
                uris[model.name] = info.model_uri
        return uris

    def _register(self, record, model_uris, run_id: str, problems: list[str]) -> str | None:
        if not model_uris:
            problems.append(
                f"--register {record.register_as}: the cell bound no fitted scikit-learn "
                "estimator that could be logged; nothing was registered."
            )
            return None
        name, uri = list(model_uris.items())[-1]
        if len(model_uris) > 1:
            problems.append(
                f"--register {record.register_as}: the cell logged {len(model_uris)} models; "
                f"registered the last one, {name!r}."
            )
        version = registry.register(uri, record.register_as, run_id=run_id)
        return f"{record.register_as} v{version.version}"

    def _finish(self, client, run_id: str, record: CellRecord) -> None:
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status=record.status)
        client.set_terminated(run_id, status=record.status, end_time=record.end_time_ms)


def _trusted_types(estimator) -> list[str] | None:
    """The types skops will not load unless told to trust them, for a model nbtrack saves itself.

    MLflow saves scikit-learn models with skops, which refuses e.g. a random forest's tree
    storage unless its type is listed as trusted. The file is written here from the user's own
    object, so its types are trusted; the list is stored in the model's MLmodel, and
    ``mlflow.pyfunc.load_model`` reads it from there.
    """
    try:
        import skops.io
    except ImportError:  # MLflow then saves with cloudpickle, which needs no list
        return None
    return skops.io.get_untrusted_types(data=skops.io.dumps(estimator)) or None


@contextmanager
def quiet_mlflow():
    """Keep MLflow's own info logs and warnings out of the user's cell output while nbtrack
    writes (what goes wrong is reported by nbtrack, in one line).
    """
    import mlflow  # noqa: F401 - its import sets its loggers' levels: set ours after it

    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextmanager
def _experiment_of(experiment_id: str):
    """Let MLflow resume a run of ``experiment_id`` although the user's ``mlflow.set_experiment``
    chose another one (MLflow refuses to, then); the user's choice is put back right after.
    """
    from mlflow.tracking import fluent

    chosen = getattr(fluent, "_active_experiment_id", None)
    if chosen is None or chosen == experiment_id:
        yield
        return
    fluent._active_experiment_id = experiment_id
    try:
        yield
    finally:
        fluent._active_experiment_id = chosen


class _active_run:
    """Make ``run_id`` MLflow's active run for fluent calls, unless it already is."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.started = False

    def __enter__(self):
        import mlflow

        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            experiment_id = mlflow.MlflowClient().get_run(self.run_id).info.experiment_id
            with _experiment_of(experiment_id):
                mlflow.start_run(run_id=self.run_id, nested=active is not None)
            self.started = True
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            import mlflow

            mlflow.end_run()
