"""Registered models: create versions from logged models, move aliases such as ``champion``."""

from __future__ import annotations

from dataclasses import dataclass


def register(model_uri: str, name: str, run_id: str | None = None, tracking_uri: str | None = None):
    """Create a new version of registered model ``name`` from a logged model.

    Parameters
    ----------
    model_uri
        The logged model, e.g. ``models:/m-1a2b...`` as returned by ``log_model``.
    name
        The registered model; created on first use.
    run_id
        The run that logged the model, recorded on the version.
    tracking_uri
        The store; default: MLflow's tracking URI.

    Returns
    -------
    mlflow.entities.model_registry.ModelVersion
        The new version; ``version.version`` is its number.

    Examples
    --------
    >>> register("models:/m-1a2b", "invoice-classifier").version  # doctest: +SKIP
    '3'

    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
            raise
    model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
    try:
        return client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id)
    except MlflowException as error:
        _raise_if_denied(error, f"add a version to registered model '{name}'", "EDIT or MANAGE")
        raise


def logged_models(run_id: str, experiment_id: str, tracking_uri: str | None = None) -> list:
    """The models a run logged (``LoggedModel`` entities), oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    return sorted(found, key=lambda model: model.creation_timestamp)


@dataclass(frozen=True)
class VersionRef:
    """A registered model version made from a run's model, with the aliases it holds."""

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...] = ()


def versions_of_runs(run_ids, tracking_uri: str | None = None) -> dict[str, list[VersionRef]]:
    """Registered model versions made from each run's models: ``{run_id: [VersionRef, ...]}``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run_ids = list(run_ids)
    versions = []
    for start in range(0, len(run_ids), 100):
        quoted = ", ".join(f"'{run_id}'" for run_id in run_ids[start : start + 100])
        versions += client.search_model_versions(f"run_id IN ({quoted})")
    # search_model_versions leaves aliases empty; the registered model knows them.
    aliases: dict[tuple[str, str], list[str]] = {}
    for name in {v.name for v in versions}:
        for alias, number in client.get_registered_model(name).aliases.items():
            aliases.setdefault((name, str(number)), []).append(alias)
    found: dict[str, list[VersionRef]] = {run_id: [] for run_id in run_ids}
    for v in versions:
        ref = VersionRef(v.name, str(v.version), v.run_id,
                         tuple(sorted(aliases.get((v.name, str(v.version)), []))))
        found.setdefault(v.run_id, []).append(ref)
    return found


def alias_holder(name: str, alias: str, tracking_uri: str | None = None):
    """The version of ``name`` that holds ``alias``, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str | int, moved_by: str, notebook: str | None,
              tracking_uri: str | None = None):
    """Move ``alias`` of registered model ``name`` to ``version``; return the previous holder.

    The move is recorded on the version as tags ``nbtrack.alias.<alias>.moved_by``,
    ``.moved_at`` (ISO time, UTC), ``.notebook`` and ``.previous`` (the version that held it).

    Examples
    --------
    >>> set_alias("invoice-classifier", "champion", 3, "ana", "train.ipynb")  # doctest: +SKIP
    <ModelVersion: ... version='2' ...>

    """
    import datetime

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    previous = alias_holder(name, alias, tracking_uri)
    try:
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as error:
        _raise_if_denied(error, f"move @{alias} of registered model '{name}'", "EDIT or MANAGE")
        raise
    moved_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    prefix = f"nbtrack.alias.{alias}"
    for key, value in {
        "moved_by": moved_by,
        "moved_at": moved_at,
        "notebook": notebook or "",
        "previous": previous.version if previous is not None else "",
    }.items():
        client.set_model_version_tag(name, str(version), f"{prefix}.{key}", str(value))
    return previous


def get_version(name: str, version: str | int, tracking_uri: str | None = None):
    """One registered model version (``ModelVersion``)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri).get_model_version(name, str(version))


def _raise_if_denied(error, action: str, needed: str) -> None:
    """Turn the server's refusal (basic-auth's 403) into a line saying which permission is missing."""
    from nbtrack.capture.lineage import current_user
    from nbtrack.errors import PermissionDeniedError

    code = str(getattr(error, "error_code", ""))
    if code not in ("PERMISSION_DENIED", "UNAUTHENTICATED") and "403" not in str(error):
        return
    if code == "UNAUTHENTICATED":
        raise PermissionDeniedError(
            f"the tracking server did not accept the login of user '{current_user()}' to {action}; "
            "check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or ~/.mlflow/credentials."
        ) from None
    raise PermissionDeniedError(
        f"user '{current_user()}' may not {action}: that needs {needed} permission on the model, "
        "and the tracking server refused (PERMISSION_DENIED). Ask the model's owner or an admin "
        "to grant it."
    ) from None


def run_of(reference: str, tracking_uri: str | None = None) -> str:
    """The run id behind a run id, ``runs:/RUN_ID/...``, ``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION`` or ``models:/m-...`` (a logged model's id).

    Raises NbtrackError naming what was not found.

    Examples
    --------
    >>> run_of("models:/invoice-classifier@champion")  # doctest: +SKIP
    '3f2a9c1b0d6e4c0f9a7e2b1c5d8f0a12'

    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from nbtrack.errors import NbtrackError

    reference = reference.strip()
    if reference.startswith("runs:/"):
        run_id = reference[len("runs:/"):].split("/", 1)[0]
        if not run_id:
            raise NbtrackError(f"{reference!r} names no run: runs:/RUN_ID/PATH is expected.")
        return run_id
    if not reference.startswith("models:/"):
        return reference
    client = MlflowClient(tracking_uri=tracking_uri)
    rest = reference[len("models:/"):].strip("/")
    try:
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in rest:
            name, number = rest.rsplit("/", 1)
            version = client.get_model_version(name, number)
        elif rest.startswith("m-"):
            run_id = client.get_logged_model(rest).source_run_id
            if not run_id:
                raise NbtrackError(f"logged model {rest!r} was not logged by a run.")
            return run_id
        else:
            raise NbtrackError(f"{reference!r} names no version: use models:/{rest}@champion or "
                               f"models:/{rest}/VERSION.")
    except MlflowException as error:
        raise NbtrackError(f"{reference!r} not found in {client.tracking_uri}: "
                           f"{error.message}") from None
    if not version.run_id:
        raise NbtrackError(f"{reference!r} (version {version.version}) was not made from a run, "
                           "so there is no run to rebuild it from.")
    return version.run_id


def load_model(reference: str, tracking_uri: str | None = None):
    """Load a logged model: from a run (its last logged model) or a ``models:/`` URI.

    A scikit-learn model comes back as the estimator itself (``predict_proba`` and all); other
    flavors as MLflow's pyfunc model.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from nbtrack.errors import NbtrackError

    client = MlflowClient(tracking_uri=tracking_uri)
    uri = reference.strip()
    if not uri.startswith(("models:/", "runs:/")):
        try:
            run = client.get_run(uri)
        except MlflowException:
            raise NbtrackError(f"no run with id {uri!r} in {client.tracking_uri}.") from None
        models = logged_models(run.info.run_id, run.info.experiment_id, tracking_uri)
        if not models:
            raise NbtrackError(f"run {uri!r} logged no model.")
        uri = models[-1].model_uri
    try:
        info = mlflow.models.get_model_info(uri)
        if "sklearn" in info.flavors:
            return mlflow.sklearn.load_model(uri)
        return mlflow.pyfunc.load_model(uri)
    except MlflowException as error:
        raise NbtrackError(f"model {reference!r} cannot be loaded: {error.message}") from None
