"""Copy runs from one MLflow store to another, whole: what ``nbtrack push`` does.

A copied run keeps its params, tags, every point of every metric series (step and timestamp),
start and end time, status, artifacts, dataset inputs, logged models (flavors, signatures and
files, loadable from the target) and its parent (``mlflow.parentRunId`` pointing at the parent's
copy). Nothing goes that nbtrack would not have logged: a run logged by hand may hold a secret,
so secret-named params are left out, and the secrets nbtrack knows of (secret-named environment
variables, params and tags, URL passwords) are redacted from params, tags and text artifacts.

Each copy carries its origin (:data:`ORIGIN_STORE`, :data:`ORIGIN_RUN`), found again by
the next push: a copy whose run has ended (its end, written last, marks it whole) is skipped, one
a cut-short push left running is finished in place, never made twice.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from nbtrack.capture.secrets import Redactor, is_secret_name

ORIGIN_STORE = "nbtrack.origin.store"
ORIGIN_RUN = "nbtrack.origin.run_id"
ORIGIN_COMPLETE = "nbtrack.origin.complete"  # earlier pushes' mark of a whole copy; not copied
ORIGIN_MODEL = "nbtrack.origin.model_id"
PARENT_TAG = "mlflow.parentRunId"
TERMINAL = ("FINISHED", "FAILED", "KILLED")
# MLflow's limits on one log_batch call.
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
PAGE = 1000  # runs or models a search returns at a time
# Fault injection for the tests: the process ends (as if killed) after this many copy steps.
CRASH_AFTER_ENV = "_NBTRACK_PUSH_CRASH_AFTER_STEPS"

# Artifacts read as text for redaction (source, history, notebooks, tables); others go as they are.
TEXT_SUFFIXES = frozenset({".py", ".txt", ".ipynb", ".json", ".md", ".csv", ".yaml", ".yml",
                           ".html", ".log", ".toml", ".cfg", ".ini", ".sh"})

PUSHED, ALREADY, FINISHED, FAILED = "pushed", "already there", "finished", "failed"


@dataclass(frozen=True)
class Outcome:
    """What happened to one run: ``state`` is one of pushed, already there, finished (a copy a
    cut-short push had left partial), failed; ``detail`` says why it failed.
    """

    run_id: str
    name: str
    state: str
    target_run_id: str | None = None
    detail: str = ""
    redacted: int = 0  # params left out and texts with a secret redacted
    size: int = 0  # bytes of artifacts and model files copied


def without_credentials(uri: str) -> str:
    """``uri`` without the ``user:password@`` part (and with a relative SQLite path absolute).

    >>> without_credentials("postgresql://mlflow:s3cret@db:5432/mlflow")
    'postgresql://db:5432/mlflow'
    """
    from nbtrack.store.kernel_state import absolute_tracking_uri

    uri = absolute_tracking_uri(uri)
    parts = urlsplit(uri)
    if parts.netloc and "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
        return urlunsplit(parts)
    return uri


def select_runs(source_uri: str, run_ids: Iterable[str] = (), experiment: str | None = None,
                filter_string: str | None = None, everything: bool = False) -> list:
    """The source's runs to push: the ids given, or an experiment's (all experiments' when
    only a filter is given, or ``everything``) matching ``filter_string``; with the parents they
    point at, parents first. Raises ``NbtrackError`` for an unknown run or experiment.
    """
    from mlflow import MlflowClient
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    from nbtrack.errors import NbtrackError

    client = MlflowClient(tracking_uri=source_uri)
    chosen: dict[str, object] = {}
    for run_id in run_ids:
        try:
            chosen[run_id] = client.get_run(run_id)
        except MlflowException as error:
            raise NbtrackError(f"no run {run_id!r} in {without_credentials(source_uri)}.") \
                from error
    if experiment is not None or filter_string or everything:
        if experiment is not None:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise NbtrackError(f"no experiment {experiment!r} in "
                                   f"{without_credentials(source_uri)}.")
            ids = [found.experiment_id]
        else:
            ids = [e.experiment_id for e in client.search_experiments()]
        try:
            for run in _all_runs(client, ids, filter_string or "", ViewType.ACTIVE_ONLY):
                chosen.setdefault(run.info.run_id, run)
        except MlflowException as error:
            raise NbtrackError(f"bad --filter {filter_string!r}: {error.message}") from error
    queue = list(chosen.values())
    while queue:  # a child's parent goes too: the copy's link needs a copy to point at
        parent_id = queue.pop().data.tags.get(PARENT_TAG)
        if parent_id and parent_id not in chosen:
            try:
                chosen[parent_id] = client.get_run(parent_id)
                queue.append(chosen[parent_id])
            except MlflowException:
                pass  # the parent is gone: its children are pushed without the link
    return _parents_first(list(chosen.values()))


def _all_runs(client, experiment_ids, filter_string, view) -> list:
    return _every(lambda token: client.search_runs(
        experiment_ids, filter_string, view, max_results=PAGE, page_token=token,
        order_by=["attributes.start_time ASC"]))


def _every(search) -> list:
    """Every item of a paged MLflow search; ``search(token)`` returns one page."""
    items, token = [], None
    while True:
        page = search(token)
        items += list(page)
        token = page.token
        if not token:
            return items


def _parents_first(runs: list) -> list:
    by_id = {run.info.run_id: run for run in runs}

    def depth(run, seen=()) -> int:
        parent = run.data.tags.get(PARENT_TAG)
        if parent in by_id and parent not in seen:
            return 1 + depth(by_id[parent], (*seen, parent))
        return 0

    return sorted(runs, key=lambda run: (depth(run), run.info.start_time or 0))


class Pusher:
    """Copies runs of ``source_uri`` to ``target_uri``; :meth:`push` one run at a time."""

    def __init__(self, source_uri: str, target_uri: str, keep_origin: bool = False) -> None:
        from mlflow import MlflowClient

        from nbtrack.store.kernel_state import without_run_urls

        # MLflow's own bars for every download would bury the push's.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.source_uri = source_uri
        self.target_uri = target_uri
        self.origin = without_credentials(source_uri)
        # A bundle's runs keep the origin they had in the store they were exported from.
        self.keep_origin = keep_origin
        self.source = MlflowClient(tracking_uri=source_uri)
        self.target = MlflowClient(tracking_uri=target_uri)
        without_run_urls(self.target)  # each run's line names its copy already
        self._experiments: dict[str, str] = {}
        self._copies: dict[str, str] = {}  # source run id -> its copy's id
        self._copies_on_target: dict[tuple[str, str], dict[str, list]] = {}
        self._source_models: dict[str, dict[str, list]] = {}  # experiment -> run id -> models
        self._steps = 0
        self._secrets = Redactor()
        self._secrets.add_from_environment()
        self._redacted = 0
        limit = os.environ.get(CRASH_AFTER_ENV)
        self._crash_after = int(limit) if limit else None

    def push(self, run) -> Outcome:
        """Copy one run (its parent already pushed, when it has one); never raises for a run
        the target refuses: the outcome says why.
        """
        name = run.info.run_name or run.info.run_id
        try:
            return self._push(run, name)
        except Exception as error:  # this run failed; the others still go
            from nbtrack.display import short_error

            denied = self._refusal(error, run.info.experiment_id)
            return Outcome(run.info.run_id, name, FAILED, detail=denied or short_error(error))

    def _refusal(self, error, source_experiment_id: str) -> str | None:
        """The line for a target that refused this user (basic-auth's 401/403), else None."""
        from nbtrack.capture.lineage import current_user

        code = str(getattr(error, "error_code", ""))
        if code == "UNAUTHENTICATED" or " 401" in str(error):
            return (f"the target did not accept the login of user '{current_user()}'; check "
                    "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or ~/.mlflow/credentials")
        if code != "PERMISSION_DENIED" and " 403" not in str(error):
            return None
        experiment = self.source.get_experiment(source_experiment_id).name
        return (f"user '{current_user()}' may not write to experiment '{experiment}' on the "
                "target: that needs EDIT or MANAGE permission there, and the server refused "
                "(PERMISSION_DENIED). Ask the experiment's owner or an admin to grant it")

    def _push(self, run, name: str) -> Outcome:
        source_id = run.info.run_id
        experiment_id = self._target_experiment(run.info.experiment_id)
        origin, origin_id = self._origin_of(run)
        copy = self._find_copy(experiment_id, origin_id, origin)
        if copy is not None and copy.info.status in TERMINAL:
            self._copies[source_id] = copy.info.run_id
            return Outcome(source_id, name, ALREADY, copy.info.run_id)
        fresh = copy is None  # a new copy: nothing on the target to compare with
        state = PUSHED if fresh else FINISHED
        if fresh:
            copy = self.target.create_run(
                experiment_id, start_time=run.info.start_time, run_name=run.info.run_name,
                tags={ORIGIN_STORE: origin, ORIGIN_RUN: origin_id})
            self._step()
        target_id = copy.info.run_id
        self._copies[source_id] = target_id
        self._redacted = self._size = 0
        redactor = self._redactor_for(run)
        params, tags = self._params_and_tags(run, redactor)
        points = self._points(run, target_id, fresh)
        if fresh and len(params) <= MAX_PARAMS and len(tags) <= MAX_TAGS \
                and len(params) + len(tags) + len(points) <= MAX_METRICS:
            self.target.log_batch(target_id, metrics=points, params=params, tags=tags)  # one call
            self._step()
        else:
            self._log_in_chunks(target_id, params, tags, points)
        self._copy_inputs(run, copy, target_id)
        self._copy_artifacts(run, copy, redactor)
        self._copy_models(run, experiment_id, target_id, fresh)
        if run.info.status in TERMINAL:
            # Last: an ended copy is a whole one.
            self.target.set_terminated(target_id, status=run.info.status,
                                       end_time=run.info.end_time)
            self._step()
        return Outcome(source_id, name, state, target_id, redacted=self._redacted,
                       size=self._size)

    def _redactor_for(self, run) -> Redactor:
        """The pusher's secrets and those the run's own params and tags name."""
        redactor = Redactor(self._secrets.key())
        redactor.add_from_namespace({**run.data.params, **run.data.tags})
        return redactor

    def _step(self) -> None:
        """One copy step done; the tests' fault injection ends the process here."""
        self._steps += 1
        if self._crash_after is not None and self._steps >= self._crash_after:
            os._exit(3)

    def _target_experiment(self, source_experiment_id: str) -> str:
        if source_experiment_id not in self._experiments:
            name = self.source.get_experiment(source_experiment_id).name
            found = self.target.get_experiment_by_name(name)
            self._experiments[source_experiment_id] = (
                found.experiment_id if found is not None else self.target.create_experiment(name))
        return self._experiments[source_experiment_id]

    def _origin_of(self, run) -> tuple[str, str]:
        tags = run.data.tags
        if self.keep_origin and tags.get(ORIGIN_STORE) and tags.get(ORIGIN_RUN):
            return tags[ORIGIN_STORE], tags[ORIGIN_RUN]
        return self.origin, run.info.run_id

    def _find_copy(self, experiment_id: str, source_id: str, origin: str):
        """The target's copy of a run (a complete one first), from one read of the experiment's
        copies per push (a search per run grows slower as the target fills).
        """
        if (experiment_id, origin) not in self._copies_on_target:
            self._copies_on_target[(experiment_id, origin)] = self._copies_in(experiment_id, origin)
        runs = self._copies_on_target[(experiment_id, origin)].get(source_id, [])
        complete = [r for r in runs if r.info.status in TERMINAL]
        return (complete or runs or [None])[0]

    def _copies_in(self, experiment_id: str, origin: str) -> dict[str, list]:
        from mlflow.entities import ViewType

        quoted = origin.replace("'", "\\'")
        found: dict[str, list] = {}
        for run in _all_runs(self.target, [experiment_id], f"tags.`{ORIGIN_STORE}` = '{quoted}'",
                             ViewType.ACTIVE_ONLY):
            found.setdefault(run.data.tags.get(ORIGIN_RUN), []).append(run)
        return found

    def _params_and_tags(self, run, redactor: Redactor) -> tuple[list, list]:
        from mlflow.entities import Param, RunTag

        params = [Param(k, self._clean(redactor, v)) for k, v in run.data.params.items()
                  if not is_secret_name(k)]
        self._redacted += len(run.data.params) - len(params)
        tags = [RunTag(k, self._clean(redactor, v)) for k, v in run.data.tags.items()
                if k not in (PARENT_TAG, ORIGIN_STORE, ORIGIN_RUN, ORIGIN_COMPLETE)]
        parent = run.data.tags.get(PARENT_TAG)
        if parent:
            copied_parent = self._copies.get(parent) or self._copy_id(parent)
            if copied_parent:
                tags.append(RunTag(PARENT_TAG, copied_parent))
        return params, tags

    def _log_in_chunks(self, target_id: str, params: list, tags: list, points: list) -> None:
        """Params and tags, then the points, within MLflow's limits on one call."""
        for chunk in _chunks(params, MAX_PARAMS):
            self.target.log_batch(target_id, params=chunk)
        for chunk in _chunks(tags, MAX_TAGS):
            self.target.log_batch(target_id, tags=chunk)
        self._step()
        for chunk in _chunks(points, MAX_METRICS):
            self.target.log_batch(target_id, metrics=chunk)
            self._step()

    def _copy_id(self, source_id: str) -> str | None:
        """The target's copy of a run pushed earlier (by another push), if any."""
        try:
            run = self.source.get_run(source_id)
        except Exception:
            return None
        origin, origin_id = self._origin_of(run)
        copy = self._find_copy(self._target_experiment(run.info.experiment_id), origin_id, origin)
        return copy.info.run_id if copy is not None else None

    def _points(self, run, target_id: str, fresh: bool) -> list:
        """Every point of every series; on a partial copy only the points it lacks."""
        from mlflow.entities import Metric

        points = []
        for key in run.data.metrics:
            history = self.source.get_metric_history(run.info.run_id, key)
            have = Counter() if fresh else Counter(
                (m.step, m.timestamp, m.value)
                for m in self.target.get_metric_history(target_id, key))
            for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
                if have[(m.step, m.timestamp, m.value)]:
                    have[(m.step, m.timestamp, m.value)] -= 1
                    continue
                points.append(Metric(key, m.value, m.timestamp, m.step))
        return points

    def _copy_inputs(self, run, copy, target_id: str) -> None:
        have = {(d.dataset.name, d.dataset.digest) for d in copy.inputs.dataset_inputs} \
            if copy.inputs else set()
        missing = [d for d in (run.inputs.dataset_inputs if run.inputs else [])
                   if (d.dataset.name, d.dataset.digest) not in have]
        if missing:
            self.target.log_inputs(target_id, datasets=missing)
            self._step()

    def _clean(self, redactor: Redactor, text: str) -> str:
        clean = redactor.redact(text)
        self._redacted += clean != text
        return clean

    def _copy_artifacts(self, run, copy, redactor: Redactor) -> None:
        # Between the runs' artifact stores: the client's calls would each read the run again.
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        source = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.source_uri)
        if not source.list_artifacts():
            return
        folder = tempfile.mkdtemp(prefix="nbtrack-push-")
        try:
            local = source.download_artifacts("", folder)
            for path in Path(local).rglob("*"):
                if path.suffix in TEXT_SUFFIXES and path.is_file():
                    self._redact_file(path, redactor)
            target = get_artifact_repository(copy.info.artifact_uri, tracking_uri=self.target_uri)
            target.log_artifacts(local)  # same paths: a second upload overwrites
            self._size += _size_of(local)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._step()

    def _redact_file(self, path: Path, redactor: Redactor) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            return  # not text after all: left as it is
        clean = self._clean(redactor, text)
        if clean != text:
            path.write_text(clean, encoding="utf-8")

    def _copy_models(self, run, experiment_id: str, target_id: str, fresh: bool) -> None:
        """Each logged model as a logged model of the copy: its files (MLmodel's ids rewritten
        to the copy's), tags and params, linked as the copy's output.
        """
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        source_id = run.info.run_id
        if run.info.experiment_id not in self._source_models:  # one read per experiment
            self._source_models[run.info.experiment_id] = self._models_by_run(
                run.info.experiment_id)
        models = self._source_models[run.info.experiment_id].get(source_id, [])
        if not models:
            return
        copies = {} if fresh else {m.tags.get(ORIGIN_MODEL): m for m in
                                   self.target.search_logged_models(
            experiment_ids=[experiment_id], filter_string=f"source_run_id = '{target_id}'")}
        steps = {o.model_id: o.step for o in (run.outputs.model_outputs if run.outputs else [])}
        for model in sorted(models, key=lambda m: m.creation_timestamp):
            copy = copies.get(model.model_id)
            if copy is not None and copy.status == LoggedModelStatus.READY:
                continue
            if copy is None:
                copy = self.target.create_logged_model(
                    experiment_id, name=model.name, source_run_id=target_id,
                    tags={**model.tags, ORIGIN_MODEL: model.model_id}, params=model.params,
                    model_type=model.model_type)
            self._copy_model_files(model, copy.model_id, source_id, target_id)
            if model.model_id in steps:
                self.target.log_outputs(target_id, [LoggedModelOutput(copy.model_id,
                                                                      steps[model.model_id])])
            self.target.finalize_logged_model(copy.model_id, model.status)
            self._step()

    def _models_by_run(self, experiment_id: str) -> dict[str, list]:
        found: dict[str, list] = {}
        for model in _every(lambda token: self.source.search_logged_models(
                experiment_ids=[experiment_id], max_results=PAGE, page_token=token)):
            found.setdefault(model.source_run_id, []).append(model)
        return found

    def _copy_model_files(self, model, new_model_id: str, source_id: str, target_id: str):
        import mlflow.artifacts

        from nbtrack.store.kernel_state import fluent_tracking_uri

        folder = tempfile.mkdtemp(prefix="nbtrack-push-model-")
        try:
            # MLflow resolves models:/<id> with the fluent API's store, whatever tracking_uri says.
            with fluent_tracking_uri(self.source_uri):
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{model.model_id}", dst_path=folder,
                    tracking_uri=self.source_uri)
            mlmodel = os.path.join(local, "MLmodel")
            if os.path.exists(mlmodel):
                with open(mlmodel, encoding="utf-8") as file:
                    text = file.read()
                with open(mlmodel, "w", encoding="utf-8") as file:
                    file.write(text.replace(model.model_id, new_model_id)
                               .replace(source_id, target_id))
            self.target.log_model_artifacts(new_model_id, local)
            self._size += _size_of(local)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def target_problem(uri: str) -> str | None:
    """Why the store at ``uri`` does not answer now, or None when it does: one quick request,
    without MLflow's own retries (minutes against a server that is down).
    """
    from mlflow import MlflowClient

    from nbtrack.display import short_error

    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return None
    except Exception as error:
        text = str(error)
        if "Failed to establish a new connection" in text or "Connection refused" in text:
            return "connection refused"
        return short_error(error)
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def push_runs(pusher: Pusher, runs: list, on_done: Callable[[Outcome], None] | None = None
              ) -> list[Outcome]:
    """Push ``runs`` in order (parents first); ``on_done`` hears of each as it ends."""
    outcomes = []
    for outcome in map(pusher.push, runs):
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes


def _size_of(folder: str) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]
