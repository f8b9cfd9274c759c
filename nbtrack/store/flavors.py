"""Save a captured model with the MLflow flavor of its framework, as a model of its run.

Each model is logged by MLflow's own flavor (``mlflow.xgboost``, ``mlflow.pytorch``...) so
``mlflow.pyfunc.load_model`` and the registry read it like any other, with a small input example
(or, for Keras, a signature: MLflow 3.17's Keras flavor fails on an input example) and pinned
requirements from the versions installed here: MLflow's requirements inference starts a
subprocess that takes seconds a model. Called on the background writer, under the gate.
"""

from __future__ import annotations

from typing import Any

from nbtrack.record import ModelCapture

# A Hugging Face model class's suffix -> the pipeline task that serves it.
HF_TASKS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForCausalLM": "text-generation",
    "ForMaskedLM": "fill-mask",
    "ForConditionalGeneration": "text2text-generation",
}


def log_model(model: ModelCapture, run_id: str, model_id: str) -> tuple[str, str]:
    """Log ``model`` with its flavor as the logged model ``model_id`` of run ``run_id``;
    return its URI and the flavor it was saved with.
    """
    flavor = model.flavor
    if flavor == "transformers":
        try:
            return _transformers(model, run_id, model_id), flavor
        except Exception:  # no pipeline for this model: its weights, with the pytorch flavor
            flavor = "pytorch"
    save = _SAVERS[flavor]
    return save(model, run_id, model_id), flavor


def _common(model: ModelCapture, run_id: str, model_id: str, requirements: list[str]) -> dict:
    return {"name": model.name, "input_example": model.input_example,
            "pip_requirements": requirements, "model_id": model_id, "run_id": run_id}


def _sklearn(model: ModelCapture, run_id: str, model_id: str) -> str:
    import mlflow.sklearn

    # MLflow saves scikit-learn models with skops: loading them elsewhere needs it too.
    requirements = mlflow.sklearn.get_default_pip_requirements(include_skops=True)
    return mlflow.sklearn.log_model(
        model.estimator, skops_trusted_types=_trusted_types(model.estimator),
        **_common(model, run_id, model_id, requirements)).model_uri


def _xgboost(model: ModelCapture, run_id: str, model_id: str) -> str:
    import mlflow.xgboost

    return mlflow.xgboost.log_model(
        model.estimator, **_common(model, run_id, model_id,
                                   mlflow.xgboost.get_default_pip_requirements())).model_uri


def _lightgbm(model: ModelCapture, run_id: str, model_id: str) -> str:
    import mlflow.lightgbm

    return mlflow.lightgbm.log_model(
        model.estimator, **_common(model, run_id, model_id,
                                   mlflow.lightgbm.get_default_pip_requirements())).model_uri


def _catboost(model: ModelCapture, run_id: str, model_id: str) -> str:
    import mlflow.catboost

    return mlflow.catboost.log_model(
        model.estimator, **_common(model, run_id, model_id,
                                   mlflow.catboost.get_default_pip_requirements())).model_uri


def _pytorch(model: ModelCapture, run_id: str, model_id: str) -> str:
    import mlflow.pytorch

    network = model.estimator
    if model.serve_logits:
        from nbtrack.store.logits import logits_of

        network = logits_of(network)
    common = _common(model, run_id, model_id, mlflow.pytorch.get_default_pip_requirements())
    if model.input_example is not None:
        try:
            # MLflow's default, "pt2", traces forward() on the example: the saved graph loads
            # without the class's code.
            return mlflow.pytorch.log_model(network, serialization_format="pt2",
                                            **common).model_uri
        except Exception:  # a forward() torch.export cannot trace: the pickled module instead
            pass
    # "pt2" cannot save a module without an input example; pickling (cloudpickle, so classes
    # defined in the notebook travel by value) needs none.
    return mlflow.pytorch.log_model(network, serialization_format="pickle", **common).model_uri


def _keras(model: ModelCapture, run_id: str, model_id: str) -> str:
    import mlflow.keras
    from mlflow.models import Model, infer_signature

    signature = None
    if model.input_example is not None:
        example = model.input_example
        signature = infer_signature(example, model.estimator.predict(example, verbose=0))
    # mlflow.keras.log_model takes no run_id; Model.log is what it calls.
    return Model.log(
        artifact_path=None, name=model.name, flavor=mlflow.keras, model=model.estimator,
        signature=signature, pip_requirements=mlflow.keras.get_default_pip_requirements(),
        save_exported_model=False, model_id=model_id, run_id=run_id).model_uri


def _transformers(model: ModelCapture, run_id: str, model_id: str) -> str:
    import mlflow.transformers

    network = model.estimator
    suffix = next((s for s in HF_TASKS if type(network).__name__.endswith(s)), None)
    if suffix is None or model.tokenizer is None:
        raise ValueError("no pipeline task for this model")
    parts = {"model": network, "tokenizer": model.tokenizer}
    return mlflow.transformers.log_model(
        parts, task=HF_TASKS[suffix], name=model.name, model_id=model_id, run_id=run_id,
        pip_requirements=_transformers_requirements(network)).model_uri


def _transformers_requirements(network: Any) -> list[str]:
    """MLflow's requirements for a transformers model, else the same packages that are here:
    MLflow 3.17 pins torchvision for every torch model and fails where it is not installed.
    """
    import mlflow.transformers

    try:
        return mlflow.transformers.get_default_pip_requirements(network)
    except ImportError:  # torchvision (or another package it names) is not installed
        return _pinned("transformers", "torch", "tokenizers", "accelerate")


def _pinned(*packages: str) -> list[str]:
    """``package==version`` for each of ``packages`` installed here."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for package in packages:
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pinned


_SAVERS = {"sklearn": _sklearn, "xgboost": _xgboost, "lightgbm": _lightgbm,
           "catboost": _catboost, "pytorch": _pytorch, "keras": _keras}


def _trusted_types(estimator: Any) -> list[str] | None:
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
