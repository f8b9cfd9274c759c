"""capture/frameworks.py and capture/curves.py on real framework objects, trained in seconds."""

from __future__ import annotations

import numpy as np
import pytest

from nbtrack.capture import curves, frameworks

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 4))
Y = (X[:, 0] > 0).astype(int)


def test_flavor_of_each_framework_and_not_of_losses_layers_without_weights_or_classes():
    import catboost
    import lightgbm as lgb
    import torch
    import xgboost as xgb

    booster = xgb.train({"max_depth": 2}, xgb.DMatrix(X, label=Y), num_boost_round=2)
    assert frameworks.flavor_of(booster) == "xgboost"
    assert frameworks.flavor_of(xgb.XGBClassifier(n_estimators=2)) == "xgboost"
    assert frameworks.flavor_of(lgb.LGBMRegressor()) == "lightgbm"
    assert frameworks.flavor_of(catboost.CatBoostClassifier()) == "catboost"
    assert frameworks.flavor_of(torch.nn.Linear(4, 2)) == "pytorch"
    assert frameworks.flavor_of(torch.nn.CrossEntropyLoss()) is None
    assert frameworks.flavor_of(torch.nn.ReLU()) is None  # no weights: nothing learned
    assert frameworks.flavor_of(torch.nn.Linear) is None
    assert frameworks.flavor_of({"a": 1}) is None


def test_unfitted_estimator_is_a_note_not_a_model():
    import xgboost as xgb

    namespace = {"clf": xgb.XGBClassifier(n_estimators=2)}
    models, notes = frameworks.models_in(["clf"], namespace, {})
    assert models == [] and "not trained yet" in notes[0]
    namespace["clf"].fit(X, Y)
    [model], notes = frameworks.models_in(["clf"], namespace, {})
    assert (model.name, model.flavor, notes) == ("clf", "xgboost", [])


def test_lightning_module_is_named_after_its_variable_whatever_the_order_of_names():
    import lightning as L
    import torch

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

    namespace = {"trainer": L.Trainer(logger=False, enable_progress_bar=False), "net": Tiny()}
    [model], _ = frameworks.models_in(["trainer", "net"], namespace, {"trainer": "net"})
    assert (model.name, model.flavor, model.model) == ("net", "pytorch", namespace["net"])


def test_input_example_of_a_dataloader_reads_its_tensors_without_drawing_random_numbers():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    features = torch.randn(30, 4)
    loader = DataLoader(TensorDataset(features, torch.zeros(30)), batch_size=10, shuffle=True)
    model = frameworks.Model("net", "pytorch", torch.nn.Linear(4, 2))
    state = torch.get_rng_state()
    rows = frameworks.input_example(model, ["loader"], {"loader": loader})
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(rows, features[:5].numpy())
    # Data of the wrong width is no example for this network.
    wide = frameworks.Model("net", "pytorch", torch.nn.Linear(7, 2))
    assert frameworks.input_example(wide, ["loader"], {"loader": loader}) is None


def test_optimizer_and_booster_settings_are_hyperparameters():
    import lightgbm as lgb
    import torch

    opt = torch.optim.SGD(torch.nn.Linear(4, 1).parameters(), lr=0.1, momentum=0.9)
    got = frameworks.hyperparameters("opt", opt, limit=50)
    assert (got["opt.lr"], got["opt.momentum"], got["opt.class"]) == (0.1, 0.9, "SGD")
    booster = lgb.train({"num_leaves": 5, "verbose": -1}, lgb.Dataset(X, Y), num_boost_round=3)
    got = frameworks.hyperparameters("gbm", booster, limit=50)
    assert got["gbm.num_leaves"] == 5 and got["gbm.num_boost_round"] == 3


def test_evaluation_records_of_each_booster_are_curves_keyed_data_set_dash_metric():
    import catboost
    import lightgbm as lgb
    import xgboost as xgb

    record = {}
    xgb.train({"eval_metric": "logloss"}, xgb.DMatrix(X, label=Y), num_boost_round=4,
              evals=[(xgb.DMatrix(X, label=Y), "val")], evals_result=record, verbose_eval=False)
    assert [step for step, _ in curves.curves_of(record)["val-logloss"]] == [0, 1, 2, 3]
    reg = lgb.LGBMRegressor(n_estimators=3, verbose=-1).fit(X, Y, eval_set=[(X[:30], Y[:30])])
    assert len(curves.curves_of(reg)["valid_0-l2"]) == 3
    cat = catboost.CatBoostClassifier(iterations=3, verbose=False, allow_writing_files=False)
    cat.fit(X, Y, eval_set=(X, Y))
    assert len(curves.curves_of(cat)["validation-Logloss"]) == 3
    # Dicts that are no evaluation record, and unfitted estimators, hold no curve.
    assert curves.curves_of({"val": {"auc": ["high"]}}) == {}
    assert curves.curves_of({"lr": 0.1}) == {}
    assert curves.curves_of(xgb.XGBClassifier()) == {}


def test_lightning_tap_records_self_log_and_remove_restores_lightnings_own_method():
    import lightning as L
    import torch
    from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import (
        _LoggerConnector,
    )
    from torch.utils.data import DataLoader, TensorDataset

    class Logs(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("energy", loss, on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    original = _LoggerConnector.log_metrics
    tap = curves.LightningTap()
    tap.install()
    try:
        assert _LoggerConnector.log_metrics is not original
        L.Trainer(max_epochs=2, log_every_n_steps=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(
            Logs(), DataLoader(TensorDataset(torch.randn(20, 4)), batch_size=10))
    finally:
        tap.remove()
    assert _LoggerConnector.log_metrics is original
    assert [step for step, _ in tap.curves["energy"]] == [0, 1, 2, 3]


@pytest.mark.parametrize("value", [np.float32(0.5), np.array(0.5)])
def test_zero_dimensional_arrays_are_curve_points(value):
    assert curves.evaluation_record({"val": {"auc": [value, value]}}) == {
        "val-auc": [(0, 0.5), (1, 0.5)]}
