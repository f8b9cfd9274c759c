"""Registered models: create versions from logged models, move aliases such as ``champion``."""

from __future__ import annotations


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
    return client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id)
