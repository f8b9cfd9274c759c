"""Models of the frameworks people train with, recognised by type, never by importing a framework.

A value's kind is read from the names of the classes it is made of (``xgboost.core.Booster``,
``torch.nn.modules.module.Module``...), so a cell that never imported torch does not pay for it,
and nothing here imports a framework. Each kind says which MLflow flavor saves it, whether it is
trained, its hyperparameters, and which of the cell's arrays is a sample of its input.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nbtrack.capture.values import flatten_param, is_simple_scalar

INPUT_EXAMPLE_ROWS = 5


@functools.lru_cache(maxsize=512)
def _lineage(cls: type) -> frozenset[str]:
    """The dotted names of ``cls`` and its bases: what kinds are recognised by."""
    try:
        return frozenset(f"{base.__module__}.{base.__qualname__}" for base in cls.__mro__)
    except Exception:  # an exotic metaclass
        return frozenset()


def _is(value: Any, *names: str) -> bool:
    if isinstance(value, type):
        return False
    lineage = _lineage(type(value))
    return any(name in lineage for name in names)


XGB_BOOSTER = "xgboost.core.Booster"
XGB_SKLEARN = "xgboost.sklearn.XGBModel"
LGB_BOOSTER = "lightgbm.basic.Booster"
LGB_SKLEARN = "lightgbm.sklearn.LGBMModel"
CATBOOST = "catboost.core.CatBoost"
KERAS_MODEL = "keras.src.models.model.Model"
KERAS_HISTORY = "keras.src.callbacks.history.History"
TORCH_MODULE = "torch.nn.modules.module.Module"
TORCH_LOSS = "torch.nn.modules.loss._Loss"
TORCH_OPTIMIZER = "torch.optim.optimizer.Optimizer"
LIGHTNING_MODULES = ("lightning.pytorch.core.module.LightningModule",
                     "pytorch_lightning.core.module.LightningModule")
LIGHTNING_TRAINERS = ("lightning.pytorch.trainer.trainer.Trainer",
                      "pytorch_lightning.trainer.trainer.Trainer")
HF_TRAINER = "transformers.trainer.Trainer"
HF_ARGUMENTS = "transformers.training_args.TrainingArguments"
HF_MODEL = "transformers.modeling_utils.PreTrainedModel"
SKLEARN = "sklearn.base.BaseEstimator"


@dataclass(frozen=True)
class Model:
    """A model found in the cell's namespace: what to save, with which MLflow flavor."""

    name: str  # the variable it is bound to
    flavor: str  # "sklearn", "xgboost", "lightgbm", "catboost", "pytorch", "keras", "transformers"
    model: Any  # what the flavor saves (a Hugging Face Trainer's model, not the Trainer)
    tokenizer: Any = None  # a Hugging Face tokenizer or processor, for the transformers flavor
    note: str = ""  # why this flavor, when it is a fallback


def flavor_of(value: Any) -> str | None:
    """The MLflow flavor that saves ``value`` (a model of a known framework), else None.

    Losses and other torch modules without parameters are not models.
    """
    if isinstance(value, type):
        return None
    lineage = _lineage(type(value))
    if XGB_BOOSTER in lineage or XGB_SKLEARN in lineage:
        return "xgboost"
    if LGB_BOOSTER in lineage or LGB_SKLEARN in lineage:
        return "lightgbm"
    if CATBOOST in lineage:
        return "catboost"
    if KERAS_MODEL in lineage:
        return "keras"
    if TORCH_MODULE in lineage:
        if TORCH_LOSS in lineage or not _has_parameters(value):
            return None
        return "pytorch"
    if SKLEARN in lineage:
        return "sklearn"
    return None


def _has_parameters(module: Any) -> bool:
    try:
        return next(iter(module.parameters()), None) is not None
    except Exception:  # a module whose parameters() is broken is no model we can save
        return False


def is_trained(value: Any, flavor: str) -> bool:
    """Whether the model holds something learned: fitted, built, or a booster."""
    try:
        if flavor in ("xgboost", "lightgbm") and hasattr(value, "__sklearn_is_fitted__"):
            return bool(value.__sklearn_is_fitted__())
        if flavor == "catboost":
            return bool(value.is_fitted())
        if flavor == "keras":
            return bool(value.built)
        if flavor == "sklearn":
            from nbtrack.capture.estimators import is_fitted

            return is_fitted(value)
    except Exception:  # a model that cannot tell is not logged
        return False
    return True


def is_optimizer(value: Any) -> bool:
    """torch.optim optimizers."""
    return _is(value, TORCH_OPTIMIZER)


def is_lightning_trainer(value: Any) -> bool:
    """Lightning's Trainer (either package name)."""
    return _is(value, *LIGHTNING_TRAINERS)


def is_hf_trainer(value: Any) -> bool:
    """Hugging Face's Trainer (and subclasses, e.g. TRL's)."""
    return _is(value, HF_TRAINER)


def _is_trainer(value: Any) -> bool:
    return is_hf_trainer(value) or is_lightning_trainer(value)


def hf_model(name: str, trainer: Any) -> Model | None:
    """The model a Hugging Face Trainer trained, with the flavor to save it by: ``transformers``
    when its tokenizer or processor is at hand, else ``pytorch`` (its logits are served).
    """
    model = getattr(trainer, "model", None)
    if model is None:
        return None
    tokenizer = getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)
    if tokenizer is not None:
        return Model(name, "transformers", model, tokenizer=tokenizer)
    return Model(name, "pytorch", model,
                 note="pytorch flavor: the Trainer has no tokenizer or processor")


def models_in(names: Iterable[str], namespace: Mapping[str, Any], trained_by: Mapping[str, str]
              ) -> tuple[list[Model], list[str]]:
    """The trained models among ``names`` (the cell's bound and fitted names), and notes for
    models that are not trained. ``trained_by`` maps a trainer's name to the name of the model
    its ``fit`` call was given (``trainer.fit(module)``): the module is the model, not the trainer.
    """
    found: dict[str, Model] = {}
    notes: list[str] = []
    seen: set[int] = set()
    # Trainers first: the model a Trainer trained is saved as the Trainer's (a Hugging Face
    # model with its tokenizer), not as the bare module the cell also bound (`bert = ...`).
    names = sorted(dict.fromkeys(names), key=lambda n: not _is_trainer(namespace.get(n)))
    for name in names:
        value = namespace.get(name)
        if value is None or id(value) in seen:
            continue
        if is_hf_trainer(value):
            model = hf_model(name, value)
            if model is not None and id(model.model) not in seen:
                seen.add(id(model.model))
                found[name] = model
            continue
        if is_lightning_trainer(value):
            module_name = trained_by.get(name)
            module = namespace.get(module_name or "")
            if module is not None and flavor_of(module) == "pytorch" and id(module) not in seen:
                seen.add(id(module))
                found[module_name] = Model(module_name, "pytorch", module)
            continue
        flavor = flavor_of(value)
        if flavor is None:
            continue
        seen.add(id(value))
        if not is_trained(value, flavor):
            if flavor != "sklearn":
                notes.append(f"model {name!r} ({type(value).__name__}) not logged: it is not "
                             "trained yet.")
            continue
        found[name] = Model(name, flavor, value)
    return list(found.values()), notes


# -- what a model was given --------------------------------------------------------------------

def _features(data: Any) -> Any:
    """The features a torch DataLoader or TensorDataset holds (its first tensor), else ``data``.

    Read from the dataset's tensors, never by iterating the loader: that would draw from the
    user's random number generator (a shuffling loader) and change what the cell computes next.
    """
    if not type(data).__module__.startswith("torch.utils.data"):
        return data
    dataset = getattr(data, "dataset", data)
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and tensors:
        return tensors[0]
    return data


def _rows(data: Any, count: int = INPUT_EXAMPLE_ROWS) -> Any:
    """The first ``count`` rows of a frame, array or tensor, as pandas or numpy; None otherwise."""
    module = type(data).__module__.split(".")[0]
    try:
        if module == "pandas" and hasattr(data, "iloc") and getattr(data, "ndim", 0) == 2:
            return data.head(count)
        if module == "numpy" and getattr(data, "ndim", 0) >= 2:
            return data[:count]
        if module == "torch" and getattr(data, "ndim", 0) >= 2:
            return data[:count].detach().cpu().numpy()
    except Exception:  # an exotic frame: the model is logged without an example
        return None
    return None


def _width(data: Any) -> tuple[int, ...] | None:
    shape = getattr(data, "shape", None)
    try:
        return tuple(int(n) for n in shape) if shape is not None else None
    except (TypeError, ValueError):
        return None


def expected_input(model: Model) -> tuple[int, int] | None:
    """(dimensions, size of the last one or channels) a model's input must have, when it says."""
    value = model.model
    try:
        if model.flavor in ("xgboost", "lightgbm", "catboost", "sklearn"):
            features = getattr(value, "n_features_in_", None)
            if features is None and hasattr(value, "num_features"):
                features = value.num_features()
            if features is None and hasattr(value, "num_feature"):
                features = value.num_feature()
            if features is None and hasattr(value, "feature_names_"):
                features = len(value.feature_names_)
            return (2, int(features)) if features else None
        if model.flavor == "keras":
            shape = value.inputs[0].shape
            return (len(shape), int(shape[-1])) if shape[-1] else None
        if model.flavor == "pytorch":
            for layer in value.modules():
                if hasattr(layer, "in_features"):
                    return (2, int(layer.in_features))
                if hasattr(layer, "in_channels") and hasattr(layer, "kernel_size"):
                    return (2 + len(layer.kernel_size), int(layer.in_channels))
                if hasattr(layer, "num_embeddings"):
                    return None
    except Exception:  # a model that cannot say: logged without an example
        return None
    return None


def input_example(model: Model, candidates: Iterable[str], namespace: Mapping[str, Any]) -> Any:
    """A few rows of the first of ``candidates`` (names the cell read or bound) shaped as the
    model's input: for a network, features (or channels) where its first layer wants them.
    """
    expected = expected_input(model)
    for name in candidates:
        data = _features(namespace.get(name))
        shape = _width(data)
        if not shape or len(shape) < 2:
            continue
        if expected is not None:
            dims, size = expected
            axis = -1 if dims == 2 else 1
            if len(shape) != dims or shape[axis] != size:
                continue
        elif model.flavor != "sklearn":
            continue
        rows = _rows(data)
        if rows is not None:
            return rows
    return None


# -- hyperparameters ---------------------------------------------------------------------------

OPTIMIZER_SETTINGS = ("lr", "weight_decay", "momentum", "betas", "eps", "dampening", "nesterov",
                      "alpha", "amsgrad")
LIGHTNING_SETTINGS = ("max_epochs", "min_epochs", "max_steps", "accumulate_grad_batches",
                      "gradient_clip_val", "precision", "check_val_every_n_epoch",
                      "val_check_interval", "log_every_n_steps")
HF_SETTINGS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
               "per_device_eval_batch_size", "gradient_accumulation_steps", "weight_decay",
               "warmup_steps", "warmup_ratio", "lr_scheduler_type", "seed", "optim", "adam_beta1",
               "adam_beta2", "adam_epsilon", "max_grad_norm", "fp16", "bf16", "eval_strategy")
KERAS_OPTIMIZER = ("name", "learning_rate", "weight_decay", "beta_1", "beta_2", "epsilon",
                   "momentum", "nesterov", "rho", "clipnorm")


def _simple(name: str, values: Mapping[str, Any], keys: Iterable[str], limit: int) -> dict:
    params: dict[str, Any] = {}
    for key in keys:
        if key in values:
            flat = flatten_param(f"{name}.{key}", _plain(values[key]), limit)
            if flat:
                params.update(flat)
    return params


def _plain(value: Any) -> Any:
    """A float for a 0-d tensor or Keras variable (a learning rate), else the value."""
    if is_simple_scalar(value) or isinstance(value, (list, tuple, dict)):
        return value
    try:
        return float(value)
    except Exception:  # not a number: flatten_param decides
        return value


def hyperparameters(name: str, value: Any, limit: int) -> dict[str, Any]:
    """The settings of a model, optimizer or trainer, prefixed with its variable's name:
    boosters' params and rounds, CatBoost's set params, torch.optim settings, a Keras model's
    optimizer, Lightning Trainer settings and a LightningModule's ``hparams``, Hugging Face
    ``TrainingArguments``. scikit-learn's ``get_params`` (XGBoost's and LightGBM's estimators
    included) is :func:`nbtrack.capture.estimators.hyperparameters`.
    """
    try:
        return _hyperparameters(name, value, limit)
    except Exception:  # a framework whose objects changed: no hyperparameters, never an error
        return {}


def _hyperparameters(name: str, value: Any, limit: int) -> dict[str, Any]:
    lineage = _lineage(type(value)) if not isinstance(value, type) else frozenset()
    if XGB_BOOSTER in lineage:
        return {f"{name}.num_boost_round": int(value.num_boosted_rounds())}
    if LGB_BOOSTER in lineage:
        params = _simple(name, value.params or {}, list(value.params or {}), limit)
        params[f"{name}.num_boost_round"] = int(value.current_iteration())
        return params
    if CATBOOST in lineage:
        settings = value.get_params()
        params = _simple(name, settings, list(settings), limit)
        if value.is_fitted():
            params[f"{name}.tree_count"] = int(value.tree_count_)
        return params
    if TORCH_OPTIMIZER in lineage:
        group = value.param_groups[0] if value.param_groups else {}
        params = _simple(name, group, OPTIMIZER_SETTINGS, limit)
        params[f"{name}.class"] = type(value).__name__
        return params
    if KERAS_MODEL in lineage:
        optimizer = getattr(value, "optimizer", None)
        if optimizer is None:
            return {}
        return _simple(f"{name}.optimizer", optimizer.get_config(), KERAS_OPTIMIZER, limit)
    if KERAS_HISTORY in lineage:
        return _simple(name, value.params or {}, ("epochs", "steps", "batch_size"), limit)
    if any(trainer in lineage for trainer in LIGHTNING_TRAINERS):
        settings = {key: getattr(value, key) for key in LIGHTNING_SETTINGS if hasattr(value, key)}
        fit_loop = getattr(value, "fit_loop", None)
        for key in ("max_epochs", "min_epochs", "max_steps"):
            if hasattr(fit_loop, key):
                settings[key] = getattr(fit_loop, key)
        return _simple(name, settings, LIGHTNING_SETTINGS, limit)
    if any(module in lineage for module in LIGHTNING_MODULES):
        hparams = dict(getattr(value, "hparams", {}) or {})
        return _simple(f"{name}.hparams", hparams, list(hparams), limit)
    if HF_TRAINER in lineage:
        return _simple(f"{name}.args", vars(value.args), HF_SETTINGS, limit)
    if HF_ARGUMENTS in lineage:
        return _simple(name, vars(value), HF_SETTINGS, limit)
    return {}


def has_hyperparameters(value: Any) -> bool:
    """Whether :func:`hyperparameters` knows ``value``'s kind (cheap: no settings are read)."""
    if isinstance(value, type):
        return False
    lineage = _lineage(type(value))
    return bool(lineage & _KNOWN)


_KNOWN = frozenset({XGB_BOOSTER, LGB_BOOSTER, CATBOOST, TORCH_OPTIMIZER, KERAS_MODEL,
                    KERAS_HISTORY, HF_TRAINER, HF_ARGUMENTS, *LIGHTNING_TRAINERS,
                    *LIGHTNING_MODULES})


def serves_logits(model: Model) -> bool:
    """A Hugging Face model saved with the pytorch flavor: its ``ModelOutput`` is no pyfunc
    result, so its logits are served.
    """
    return model.flavor == "pytorch" and _is(model.model, HF_MODEL)


def optimized_by(module: Any, optimizers: Iterable[Any]) -> bool:
    """Whether one of ``optimizers`` updates ``module``'s parameters (the cell trains it)."""
    if not _is(module, TORCH_MODULE):
        return False
    try:
        first = next(iter(module.parameters()), None)
        if first is None:
            return False
        return any(first is param for optimizer in optimizers
                   for group in optimizer.param_groups for param in group["params"])
    except Exception:  # an optimizer of unusual shape
        return False


@functools.lru_cache(maxsize=64)
def trained_receivers(code: str) -> frozenset[str]:
    """Names the code calls ``train``/``fit`` on (``trainer.train()``), at any depth."""
    import ast

    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return frozenset()
    return frozenset(
        node.func.value.id for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("train", "fit") and isinstance(node.func.value, ast.Name))


@functools.lru_cache(maxsize=64)
def booster_params_names(code: str) -> tuple[str, ...]:
    """Names the code passes as a booster's params: ``xgb.train(params, ...)``,
    ``lgb.train(params=...)``; the dict a computed value (``{"seed": seed}``) too.
    """
    import ast

    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return ()
    names = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "train"):
            given = node.args[0] if node.args else next(
                (k.value for k in node.keywords if k.arg == "params"), None)
            if isinstance(given, ast.Name):
                names.append(given.id)
    return tuple(dict.fromkeys(names))
