"""The only code that writes runs to MLflow.

A :class:`~nbtrack.record.CellRecord` becomes one MLflow run: params, metrics and tags in batches,
artifacts in one upload, datasets as run inputs, models with MLflow's sklearn flavor. Each part that
fails is reported as a problem and the rest is still written; a run the store does not accept at all
comes back with ``run_id=None`` so the caller can keep the record.
"""

from __future__ import annotations

import errno
import sqlite3
import tempfile
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path

from nbtrack.display import short_error as _short
from nbtrack.errors import RunOpenedPartlyError, StoreError
from nbtrack.record import KILLED_REASON_TAG, CellRecord, FigureSnapshot, RunOutcome, Series
from nbtrack.store import flavors, index_file, registry
from nbtrack.store.kernel_state import (
    experiment_of,
    quiet_mlflow,
    store_opening,
    unused_array_libraries_left_alone,
    without_run_urls,
)
from nbtrack.threads import GATE, IMPORT_GUARD

# MLflow's per-call limits for log_batch (mlflow.utils.validation).
PARAMS_TAGS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
# Set on the run as it is created, and noted in the journal before: see Recorder._create_run.
WRITE_TOKEN_TAG = "nbtrack.write_token"


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
            # Opening a new SQLite store creates and migrates its tables: two threads doing it
            # at once (the writer and the recovery of ended kernels) would trip over each other.
            with store_opening(uri):
                self._client = MlflowClient(tracking_uri=uri)
            without_run_urls(self._client)
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

    def _create_run(self, client, record: CellRecord, progress: dict, save_progress) -> str:
        """Create the record's run, or find the one an attempt cut short made. The run carries
        a token the journal notes first: an attempt stopped between the store making the run and
        the journal noting its id (an import refused inside ``create_run`` after its insert, or
        a kernel killed there) must not leave a second, RUNNING run when it is done again.
        """
        experiment_id = self.experiment_id(record.experiment)
        token = progress.get("token")
        if token is not None:
            from mlflow.entities import ViewType

            made = client.search_runs([experiment_id], f"tags.`{WRITE_TOKEN_TAG}` = '{token}'",
                                      run_view_type=ViewType.ALL, max_results=1)
            if made:
                return made[0].info.run_id
        else:
            import uuid

            progress["token"] = token = uuid.uuid4().hex
            save_progress(progress)
        return client.create_run(experiment_id, start_time=record.start_time_ms,
                                 run_name=record.run_name,
                                 tags={WRITE_TOKEN_TAG: token}).info.run_id

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
        try:
            if params:
                from mlflow.entities import Param

                with quiet_mlflow():
                    self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
            # A run left active by an earlier cell's own mlflow.start_run() stays as it was: ours
            # goes on top of it instead of raising MLflow's "run already active" error.
            with experiment_of(run.info.experiment_id):
                mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
        except Exception as error:  # the store went away after creating the run
            raise RunOpenedPartlyError(run_id, error) from error
        return run_id

    def write(self, record: CellRecord, progress: dict | None = None,
              save_progress=None) -> RunOutcome:
        """Write one record as one run. Never raises: what fails is listed in ``problems``.

        ``progress`` says which parts an earlier attempt already wrote (they are skipped), and is
        updated and handed to ``save_progress`` after each part, so an attempt cut short resumes.
        The outcome's ``retry`` is set when the store refused a part for now (unreachable,
        locked, artifact location not writable): the caller keeps the record and tries again.
        """
        with quiet_mlflow():
            return self._write(record, {} if progress is None else progress,
                               save_progress or (lambda state: None))

    def _write(self, record: CellRecord, progress: dict, save_progress) -> RunOutcome:
        problems: list[str] = []
        uri = "<unknown store>"
        try:
            uri = self.tracking_uri
            client = self.client
            run_id = progress.get("run_id") or record.run_id
            if run_id is None:
                run_id = self._create_run(client, record, progress, save_progress)
                progress["run_id"] = run_id
                save_progress(progress)
        except Exception as error:
            return RunOutcome(
                run_id=None,
                experiment=record.experiment,
                tracking_uri=uri,
                problems=(
                    f"run '{record.run_name}' not recorded yet: the MLflow store at {uri} did not "
                    f"accept it ({_short(error)}).",
                ),
                retry=True,
            )
        done = progress.setdefault("done", [])
        model_uris: dict[str, str] = progress.setdefault("models", {})
        refused: list[str] = []

        def attempt(part: str, what: str, step) -> object:
            if part in done:
                return None
            try:
                result = step()
            except Exception as error:
                if store_refused(error) or IMPORT_GUARD.refused_here():
                    refused.append(f"{what} of run '{record.run_name}' not written yet: "
                                   f"{_short(error)}")
                    return None
                problems.append(f"{what} of run '{record.run_name}' not recorded: {_short(error)}")
            else:
                if not refused:  # parts after a refused one are written again next time
                    done.append(part)
                    save_progress(progress)
                return result
            return None

        attempt("values", "params, metrics and tags",
                lambda: self._log_values(client, run_id, record))
        if record.artifacts:
            attempt("artifacts", "artifacts",
                    lambda: self._log_artifacts(client, run_id, record, problems))
        for index, data in enumerate(record.datasets):
            attempt(f"dataset-{index}", f"dataset {data.name!r}",
                    lambda data=data: self._log_dataset(client, run_id, data))
        # A model is saved by its MLflow flavor, which imports and changes warning filters (its
        # signature inference does): with the gate, while no user code runs.
        for model in record.models:
            def log_model(model=model):
                with GATE.idle():
                    model_uris[model.name] = self._log_model(run_id, record, model, problems)
            attempt(f"model-{model.name}", f"model {model.name!r}", log_model)
        registered = progress.get("registered")
        if record.register_as and not refused:
            def register():
                progress["registered"] = self._register(record, model_uris, run_id, problems)
            attempt("register", f"registration as {record.register_as!r}", register)
            registered = progress.get("registered")
        if not refused:
            attempt("finish", "run status", lambda: self._finish(client, run_id, record))
            if "finish" in done:
                _index_runs(client, [run_id])
        return RunOutcome(
            run_id=run_id,
            experiment=record.experiment,
            tracking_uri=uri,
            model_uris=dict(model_uris),
            registered=registered,
            problems=tuple(refused or problems),
            retry=bool(refused),
        )

    def record_killed(self, facts: dict, reason: str, series: Sequence[Series] = (),
                      on_created=None) -> str:
        """End the run of a cell whose kernel died (or create it, if it was never opened) as
        KILLED, with the reason in a tag, the cell's source, and the ``series`` points it had
        logged by then. Returns the run id. ``on_created`` is called with the id of a run made
        here, before anything else is written to it.
        """
        from mlflow.entities import RunTag

        with quiet_mlflow():
            client = self.client
            run_id = facts.get("run_id")
            if run_id:
                if client.get_run(run_id).info.status != "RUNNING":
                    return run_id  # its cell's record already ended it
            else:
                tags = dict(facts.get("tags") or {})
                tags["mlflow.note.content"] = "```python\n" + str(facts.get("source", "")) + "\n```"
                run_id = client.create_run(
                    self.experiment_id(facts["experiment"]),
                    start_time=facts.get("start_time_ms"),
                    run_name=facts.get("run_name"),
                    tags=tags,
                ).info.run_id
                if on_created is not None:
                    on_created(run_id)
                client.log_text(run_id, str(facts.get("source", "")), "cell/source.py")
            client.log_batch(run_id, tags=[RunTag(KILLED_REASON_TAG, reason[:500])])
            _log_metrics(client, run_id, _series_metrics(series))
            client.set_terminated(run_id, status="KILLED")
            _index_runs(client, [run_id])
        return run_id

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
                self.client.set_tag(run.info.run_id, KILLED_REASON_TAG, reason[:500])
                self.client.set_terminated(run.info.run_id, status="KILLED")
            _index_runs(self.client, [run.info.run_id for run in runs])
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
        metrics += _series_metrics(record.series)
        param_entities = [Param(k, v) for k, v in params.items()]
        tags = [RunTag(k, v) for k, v in record.tags.items()]
        for start in range(0, max(len(param_entities), len(tags), 1), PARAMS_TAGS_PER_BATCH):
            client.log_batch(
                run_id,
                params=param_entities[start : start + PARAMS_TAGS_PER_BATCH],
                tags=tags[start : start + PARAMS_TAGS_PER_BATCH],
            )
        _log_metrics(client, run_id, metrics)

    def _log_artifacts(self, client, run_id: str, record: CellRecord,
                       problems: list[str]) -> None:
        with tempfile.TemporaryDirectory(prefix="nbtrack-") as folder:
            for artifact in record.artifacts:
                if isinstance(artifact, FigureSnapshot):
                    content = _render(artifact, record, problems)
                    if content is None:
                        continue
                else:
                    content = artifact.content
                target = Path(folder, *artifact.path.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
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

    def _log_model(self, run_id: str, record: CellRecord, model, problems: list[str]) -> str:
        """Log one model with its framework's MLflow flavor as a model of the run; return its URI.

        The logged model is created here, in the run's experiment, and handed to log_model: the
        writer runs on a thread of its own, where MLflow has no active run, and its default
        experiment may be one the user chose for their own runs since.
        """
        client = self.client
        run = client.get_run(run_id)
        logged = client.create_logged_model(
            run.info.experiment_id, name=model.name, source_run_id=run_id,
            params=dict(run.data.params),
        )
        with unused_array_libraries_left_alone():
            uri, flavor = flavors.log_model(model, run_id, logged.model_id)
        if flavor != model.flavor:
            problems.append(f"model {model.name!r} of run '{record.run_name}' saved with the "
                            f"{flavor} flavor: MLflow's {model.flavor} flavor has no pipeline "
                            "for it.")
        return uri

    def _register(self, record, model_uris, run_id: str, problems: list[str]) -> str | None:
        if not model_uris:
            problems.append(
                f"--register {record.register_as}: the cell bound no trained model "
                "that could be logged; nothing was registered."
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
        client.set_terminated(run_id, status=record.status, end_time=record.end_time_ms)


def _index_runs(client, run_ids: list[str]) -> None:
    """Put finished runs into the run index's file, so a board's first look need not read them
    from the store. A cache: when it cannot be written, the board reads the runs from MLflow.
    """
    try:
        index_file.record_runs(client.tracking_uri, [client.get_run(run_id) for run_id in run_ids])
    except Exception:  # noqa: S110 - the run is in the store; only a shortcut to it is missing
        pass


def _series_metrics(series: Sequence[Series]) -> list:
    """The points of ``series`` as MLflow metric entities."""
    from mlflow.entities import Metric

    return [metric for points in series for metric in map(
        Metric, repeat(points.key), points.values, points.timestamps_ms, points.steps)]


def _log_metrics(client, run_id: str, metrics: list) -> None:
    for start in range(0, len(metrics), METRICS_PER_BATCH):
        # A write redone with the gate (it met a first import) may be a million points long: a
        # cell waiting to start goes between two batches instead of waiting for all of them.
        GATE.let_user_code_in()
        client.log_batch(run_id, metrics=metrics[start : start + METRICS_PER_BATCH])


def _render(snapshot: FigureSnapshot, record: CellRecord, problems: list[str]) -> bytes | None:
    """The PNG of a figure the cell left undisplayed, or None (and a problem) if it cannot be drawn."""
    from nbtrack.capture.figures import render_snapshot

    try:
        return render_snapshot(snapshot)
    except Exception as error:  # a figure that cannot be drawn must not cost the run its other files
        problems.append(f"figure {snapshot.path} of run '{record.run_name}' not recorded: it could "
                        f"not be rendered ({_short(error)})")
        return None


def store_refused(error: BaseException) -> bool:
    """Whether ``error`` means the store cannot take the write now (as opposed to refusing this
    value for good): unreachable, timed out, locked, overloaded, or out of disk or permission for
    artifacts. Such writes are kept and tried again.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        name = type(error).__name__
        text = str(error).lower()
        if isinstance(error, (ConnectionError, TimeoutError, sqlite3.OperationalError)):
            return True
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS,
                                                          errno.EPERM, errno.EDQUOT,
                                                          errno.ENOTDIR):
            return True
        if name in ("OperationalError", "ConnectionError", "Timeout", "ReadTimeout",
                    "ConnectTimeout", "MaxRetryError", "NewConnectionError"):
            return True
        if name == "MlflowException":
            code = str(getattr(error, "error_code", ""))
            if code in ("TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED",
                        "DEADLINE_EXCEEDED"):
                return True
            if any(hint in text for hint in ("max retries exceeded", "database is locked",
                                              "connection refused", "timed out",
                                              "unable to open database", "bad gateway",
                                              "service unavailable")):
                return True
        error = error.__cause__ or error.__context__
    return False
