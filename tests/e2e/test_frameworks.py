"""Every framework nbtrack knows, trained in a real notebook in a real kernel, read back from MLflow.

Each notebook is written as a data scientist writes it: ``%load_ext nbtrack``, then imports and
data in an untracked cell, then one ``%%track`` cell per framework with no nbtrack or MLflow call
in it. The notebook runs once per module (nbclient, python3 kernel, its own SQLite store); each
test then reads one framework's run back: the model's flavor in its MLmodel, a pyfunc prediction
of the right shape, the learning curve's points, the hyperparameters, and for some the registry.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import nbtrack_cli, run_notebook, write_notebook

BOOSTER_CELLS = [
    "%load_ext nbtrack",
    "import lightgbm as lgb\n"
    "import numpy as np\n"
    "import xgboost as xgb\n"
    "from catboost import CatBoostClassifier\n"
    "from sklearn.datasets import load_breast_cancer, load_diabetes\n"
    "from sklearn.model_selection import train_test_split\n"
    "\n"
    "X, y = load_breast_cancer(return_X_y=True)\n"
    "X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.25, random_state=0)\n"
    "Xd, yd = load_diabetes(return_X_y=True)\n"
    "Xd_train, Xd_val, yd_train, yd_val = train_test_split(Xd, yd, test_size=0.25, random_state=0)",
    # XGBoost's native API: the evaluation record is the dict handed to evals_result=.
    "%%track -n xgb-native\n"
    "params = {'objective': 'binary:logistic', 'eval_metric': 'auc', 'max_depth': 3, 'eta': 0.3}\n"
    "dtrain = xgb.DMatrix(X_train, label=y_train)\n"
    "dval = xgb.DMatrix(X_val, label=y_val)\n"
    "record = {}\n"
    "booster = xgb.train(params, dtrain, num_boost_round=8,\n"
    "                    evals=[(dtrain, 'train'), (dval, 'val')],\n"
    "                    evals_result=record, verbose_eval=False)",
    # XGBoost's scikit-learn API, registered by the cell itself.
    "%%track -n xgb-sklearn --register cancer-xgb\n"
    "clf = xgb.XGBClassifier(n_estimators=6, max_depth=2, learning_rate=0.3,\n"
    "                        eval_metric='logloss')\n"
    "clf.fit(X_train, y_train, eval_set=[(X_val, y_val)], verbose=False)",
    # LightGBM's native API with record_evaluation.
    "%%track -n lgb-native\n"
    "evals = {}\n"
    "gbm = lgb.train({'objective': 'regression', 'metric': 'l2', 'num_leaves': 7,\n"
    "                 'learning_rate': 0.1, 'verbose': -1},\n"
    "                lgb.Dataset(Xd_train, yd_train), num_boost_round=7,\n"
    "                valid_sets=[lgb.Dataset(Xd_val, yd_val)], valid_names=['val'],\n"
    "                callbacks=[lgb.record_evaluation(evals)])",
    "%%track -n lgb-sklearn\n"
    "reg = lgb.LGBMRegressor(n_estimators=5, num_leaves=5, verbose=-1)\n"
    "reg.fit(Xd_train, yd_train, eval_set=[(Xd_val, yd_val)])",
    "%%track -n catboost\n"
    "cat = CatBoostClassifier(iterations=5, depth=3, learning_rate=0.3, verbose=False,\n"
    "                         allow_writing_files=False)\n"
    "cat.fit(X_train, y_train, eval_set=(X_val, y_val))",
]

NETWORK_CELLS = [
    "%load_ext nbtrack",
    "import os\n"
    "os.environ['KERAS_BACKEND'] = 'torch'\n"
    "\n"
    "import keras\n"
    "import lightning as L\n"
    "import numpy as np\n"
    "import torch\n"
    "from sklearn.datasets import load_breast_cancer, load_iris\n"
    "from sklearn.preprocessing import StandardScaler\n"
    "from tokenizers import Tokenizer, models, pre_tokenizers\n"
    "from torch.utils.data import DataLoader, TensorDataset\n"
    "from transformers import (BertConfig, BertForSequenceClassification,\n"
    "                          PreTrainedTokenizerFast, Trainer, TrainingArguments)\n"
    "\n"
    "torch.manual_seed(0)\n"
    "iris = load_iris()\n"
    "X_iris = torch.tensor(StandardScaler().fit_transform(iris.data), dtype=torch.float32)\n"
    "y_iris = torch.tensor(iris.target)\n"
    "loader = DataLoader(TensorDataset(X_iris, y_iris), batch_size=50, shuffle=True)\n"
    "X_cancer, y_cancer = load_breast_cancer(return_X_y=True)\n"
    "X_cancer = StandardScaler().fit_transform(X_cancer).astype('float32')\n"
    "\n"
    "class IrisNet(L.LightningModule):\n"
    "    def __init__(self, lr=0.05, hidden=8):\n"
    "        super().__init__()\n"
    "        self.save_hyperparameters()\n"
    "        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(),\n"
    "                                       torch.nn.Linear(hidden, 3))\n"
    "\n"
    "    def forward(self, x):\n"
    "        return self.net(x)\n"
    "\n"
    "    def training_step(self, batch, batch_idx):\n"
    "        x, y = batch\n"
    "        loss = torch.nn.functional.cross_entropy(self(x), y)\n"
    "        self.log('train_loss', loss, on_step=False, on_epoch=True)\n"
    "        return loss\n"
    "\n"
    "    def configure_optimizers(self):\n"
    "        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)\n"
    "\n"
    "vocab = {'[PAD]': 0, '[UNK]': 1, '[CLS]': 2, '[SEP]': 3, 'good': 4, 'great': 5,\n"
    "         'bad': 6, 'awful': 7, 'movie': 8, 'film': 9}\n"
    "word_level = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))\n"
    "word_level.pre_tokenizer = pre_tokenizers.Whitespace()\n"
    "tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token='[UNK]',\n"
    "                                    pad_token='[PAD]', cls_token='[CLS]', sep_token='[SEP]')\n"
    "texts = ['good movie', 'great film', 'bad movie', 'awful film'] * 4\n"
    "encoded = tokenizer(texts, padding=True)\n"
    "reviews = [{'input_ids': ids, 'attention_mask': mask, 'labels': label}\n"
    "           for ids, mask, label in zip(encoded['input_ids'], encoded['attention_mask'],\n"
    "                                       [1, 1, 0, 0] * 4)]\n"
    "\n"
    "# Probes: how many times the live panel was drawn, seen from inside each framework's loop.\n"
    "import nbtrack\n"
    "from transformers import TrainerCallback\n"
    "seen = {}\n"
    "def draws_now(name):\n"
    "    live = nbtrack._tracker().active.live\n"
    "    seen.setdefault(name, []).append(live.draws if live is not None else -1)\n"
    "class LightningProbe(L.Callback):\n"
    "    def on_train_epoch_end(self, trainer, module):\n"
    "        draws_now('lightning')\n"
    "class HFProbe(TrainerCallback):\n"
    "    def on_log(self, args, state, control, logs=None, **kwargs):\n"
    "        draws_now('bert')",
    # A plain torch loop: an optimizer, a loss module (no model), a 0-d tensor metric.
    "%%track -n torch-loop\n"
    "net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))\n"
    "opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)\n"
    "loss_fn = torch.nn.CrossEntropyLoss()\n"
    "for epoch in range(30):\n"
    "    opt.zero_grad()\n"
    "    loss = loss_fn(net(X_iris), y_iris)\n"
    "    loss.backward()\n"
    "    opt.step()\n"
    "accuracy = (net(X_iris).argmax(dim=1) == y_iris).float().mean()",
    "%%track -n lightning\n"
    "module = IrisNet(lr=0.05, hidden=8)\n"
    "trainer = L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False,\n"
    "                    enable_progress_bar=False, enable_model_summary=False,\n"
    "                    callbacks=[LightningProbe()])\n"
    "trainer.fit(module, loader)\n"
    "print('live draws while training:', max(seen['lightning']))",
    "%%track -n keras\n"
    "model = keras.Sequential([keras.Input(shape=(30,)),\n"
    "                          keras.layers.Dense(8, activation='relu'),\n"
    "                          keras.layers.Dense(1, activation='sigmoid')])\n"
    "model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01),\n"
    "              loss='binary_crossentropy', metrics=['accuracy'])\n"
    "history = model.fit(X_cancer, y_cancer, epochs=3, batch_size=64, validation_split=0.2,\n"
    "                    verbose=0, callbacks=[keras.callbacks.LambdaCallback(\n"
    "                        on_epoch_end=lambda epoch, logs: draws_now('keras'))])\n"
    "print('live draws while training:', max(seen['keras']))",
    "%%track -n bert\n"
    "config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,\n"
    "                    num_attention_heads=2, intermediate_size=32, num_labels=2)\n"
    "bert = BertForSequenceClassification(config)\n"
    "args = TrainingArguments(output_dir='hf-out', report_to=[], logging_steps=1,\n"
    "                         eval_strategy='epoch', num_train_epochs=2, use_cpu=True,\n"
    "                         per_device_train_batch_size=8, save_strategy='no', seed=7)\n"
    "hf_trainer = Trainer(model=bert, args=args, train_dataset=reviews, eval_dataset=reviews,\n"
    "                     processing_class=tokenizer, callbacks=[HFProbe()])\n"
    "hf_trainer.train()\n"
    "print('live draws while training:', max(seen['bert']))",
]


@dataclass
class Executed:
    """A notebook run in a kernel, and the runs it left in its store, by run name."""

    folder: Path
    uri: str
    runs: dict
    outputs: dict  # run name -> the text its cell printed

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


def execute(tmp_path_factory, empty_store_file, name: str, cells: list[str]):
    """Run ``cells`` as notebook ``name`` in a kernel on a store of its own; yield what it left."""
    import mlflow

    root = tmp_path_factory.mktemp(name)
    folder = root / "project"
    folder.mkdir()
    database = root / "mlflow.db"
    shutil.copy(empty_store_file, database)
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?) "
                   "WHERE experiment_id = 0", (str(empty_store_file.parent), str(folder)))
    uri = f"sqlite:///{database}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        patch.setenv("NBTRACK_JOURNAL_DIR", str(root / "journal"))
        patch.setenv("NBTRACK_CACHE_DIR", str(root / "cache"))
        for variable in ("JPY_SESSION_NAME", "PAPERMILL_INPUT_PATH", "NBTRACK_BATCH"):
            patch.delenv(variable, raising=False)
        mlflow.set_tracking_uri(None)
        path = write_notebook(folder / f"{name}.ipynb", cells)
        notebook = run_notebook(path, folder, timeout=600)
        outputs = {}
        for cell in notebook.cells:
            if cell.source.startswith("%%track -n "):
                text = "".join(o.get("text", "") for o in cell.outputs)
                outputs[cell.source.split()[2]] = text
        client = mlflow.MlflowClient(tracking_uri=uri)
        [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
        runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
        yield Executed(folder, uri, runs, outputs)
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def boosters(tmp_path_factory, empty_store_file):
    yield from execute(tmp_path_factory, empty_store_file, "boosters", BOOSTER_CELLS)


@pytest.fixture(scope="module")
def networks(tmp_path_factory, empty_store_file):
    yield from execute(tmp_path_factory, empty_store_file, "networks", NETWORK_CELLS)


def logged_model(executed: Executed, run_name: str):
    """The run's only logged model: (its LoggedModel, its pyfunc)."""
    import mlflow

    run = executed.runs[run_name]
    assert run.info.status == "FINISHED", executed.outputs[run_name]
    mlflow.set_tracking_uri(executed.uri)
    try:
        models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run.info.run_id}'",
                                             output_format="list")
        assert len(models) == 1, (executed.outputs[run_name], [m.name for m in models])
        return models[0], mlflow.pyfunc.load_model(models[0].model_uri)
    finally:
        mlflow.set_tracking_uri(None)


def curve(executed: Executed, run_name: str, key: str) -> list[tuple[int, float]]:
    history = executed.client.get_metric_history(executed.runs[run_name].info.run_id, key)
    return [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]


def params(executed: Executed, run_name: str) -> dict[str, str]:
    return executed.runs[run_name].data.params


# -- boosters ----------------------------------------------------------------------------------

def test_xgboost_native_booster_logged_with_its_evals_result_curves_and_rounds(boosters):
    model, pyfunc = logged_model(boosters, "xgb-native")
    assert model.name == "booster"
    assert "xgboost" in pyfunc.metadata.flavors
    assert pyfunc.predict(boosters_rows(30)).shape == (3,)
    for key in ("train-auc", "val-auc"):
        points = curve(boosters, "xgb-native", key)
        assert [step for step, _ in points] == list(range(8)), key
        assert all(0.5 < value <= 1 for _, value in points)
    got = params(boosters, "xgb-native")
    assert got["booster.num_boost_round"] == "8"
    assert got["params.max_depth"] == "3"


def test_xgboost_classifier_curves_params_and_register_option_loads_by_version(boosters):
    import mlflow

    model, pyfunc = logged_model(boosters, "xgb-sklearn")
    assert model.name == "clf"
    assert "xgboost" in pyfunc.metadata.flavors
    assert pyfunc.predict(boosters_rows(30)).shape == (3,)
    points = curve(boosters, "xgb-sklearn", "validation_0-logloss")
    assert [step for step, _ in points] == list(range(6))
    assert points[-1][1] < points[0][1]  # the loss falls
    got = params(boosters, "xgb-sklearn")
    assert got["clf.n_estimators"] == "6" and got["clf.max_depth"] == "2"
    # --register cancer-xgb made version 1 of the run's model, loadable by version.
    [version] = boosters.client.search_model_versions("name = 'cancer-xgb'")
    assert version.version == 1 and version.run_id == boosters.runs["xgb-sklearn"].info.run_id
    mlflow.set_tracking_uri(boosters.uri)
    try:
        registered = mlflow.pyfunc.load_model("models:/cancer-xgb/1")
    finally:
        mlflow.set_tracking_uri(None)
    assert registered.predict(boosters_rows(30)).shape == (3,)


def test_lightgbm_native_booster_logged_with_record_evaluation_curve_and_params(boosters):
    model, pyfunc = logged_model(boosters, "lgb-native")
    assert model.name == "gbm"
    assert "lightgbm" in pyfunc.metadata.flavors
    assert pyfunc.predict(boosters_rows(10)).shape == (3,)
    points = curve(boosters, "lgb-native", "val-l2")
    assert [step for step, _ in points] == list(range(7))
    got = params(boosters, "lgb-native")
    assert got["gbm.num_boost_round"] == "7"
    assert got["gbm.num_leaves"] == "7" and got["gbm.learning_rate"] == "0.1"


def test_lightgbm_regressor_logged_with_eval_set_curve_and_params(boosters):
    model, pyfunc = logged_model(boosters, "lgb-sklearn")
    assert model.name == "reg"
    assert "lightgbm" in pyfunc.metadata.flavors
    assert pyfunc.predict(boosters_rows(10)).shape == (3,)
    points = curve(boosters, "lgb-sklearn", "valid_0-l2")
    assert [step for step, _ in points] == list(range(5))
    got = params(boosters, "lgb-sklearn")
    assert got["reg.n_estimators"] == "5" and got["reg.num_leaves"] == "5"


def test_catboost_classifier_logged_with_eval_set_curve_and_set_params(boosters):
    model, pyfunc = logged_model(boosters, "catboost")
    assert model.name == "cat"
    assert "catboost" in pyfunc.metadata.flavors
    assert len(pyfunc.predict(boosters_rows(30))) == 3
    points = curve(boosters, "catboost", "validation-Logloss")
    assert [step for step, _ in points] == list(range(5))
    got = params(boosters, "catboost")
    assert got["cat.iterations"] == "5" and got["cat.depth"] == "3"
    assert got["cat.learning_rate"] == "0.3"


def boosters_rows(width: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, width))


# -- networks ----------------------------------------------------------------------------------

def test_torch_loop_logs_module_optimizer_settings_tensor_metric_and_promotes(networks):
    import mlflow

    model, pyfunc = logged_model(networks, "torch-loop")
    assert model.name == "net"  # the loss module is no model
    assert "pytorch" in pyfunc.metadata.flavors
    rows = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    assert pyfunc.predict(rows).shape == (5, 3)
    got = params(networks, "torch-loop")
    assert got["opt.lr"] == "0.1" and got["opt.momentum"] == "0.9"
    assert got["opt.class"] == "SGD"
    accuracy = networks.runs["torch-loop"].data.metrics["accuracy"]  # a 0-d tensor
    assert 0.5 < accuracy <= 1
    # nbtrack promote registers the run's model and points @champion at it.
    run_id = networks.runs["torch-loop"].info.run_id
    done = nbtrack_cli("promote", run_id, "--model", "iris-net", cwd=networks.folder,
                       env={"MLFLOW_TRACKING_URI": networks.uri}, check=True)
    assert "registered iris-net v1" in done.stdout
    mlflow.set_tracking_uri(networks.uri)
    try:
        champion = mlflow.pyfunc.load_model("models:/iris-net@champion")
    finally:
        mlflow.set_tracking_uri(None)
    assert champion.predict(rows).shape == (5, 3)


def test_live_panel_draws_each_frameworks_points_while_it_trains(networks):
    # The probes ran inside the training loops (before the cell ended), where nothing but the
    # frameworks' own reporting (self.log, History, the Trainer's logs) could draw the panel.
    for name in ("lightning", "keras", "bert"):
        line = next(line for line in networks.outputs[name].splitlines()
                    if line.startswith("live draws while training:"))
        assert int(line.split(":")[1]) >= 1, networks.outputs[name]


def test_lightning_module_logged_by_its_name_with_self_log_curve_and_hparams(networks):
    model, pyfunc = logged_model(networks, "lightning")
    assert model.name == "module"
    assert "pytorch" in pyfunc.metadata.flavors
    rows = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    assert pyfunc.predict(rows).shape == (5, 3)
    points = curve(networks, "lightning", "train_loss")
    assert len(points) == 4  # on_epoch=True, max_epochs=4
    got = params(networks, "lightning")
    assert got["module.hparams.lr"] == "0.05" and got["module.hparams.hidden"] == "8"
    assert got["trainer.max_epochs"] == "4"


def test_keras_model_logged_with_history_curves_and_optimizer_settings(networks, monkeypatch):
    # The model was trained on Keras's torch backend; loading it needs that backend too (the
    # MLmodel records it as keras_backend, MLflow does not set it).
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    model, pyfunc = logged_model(networks, "keras")
    assert pyfunc.metadata.flavors["keras"]["keras_backend"] == "torch"
    assert model.name == "model"
    assert "keras" in pyfunc.metadata.flavors
    rows = np.random.default_rng(0).normal(size=(4, 30)).astype("float32")
    assert np.asarray(pyfunc.predict(rows)).shape == (4, 1)
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        points = curve(networks, "keras", key)
        assert [step for step, _ in points] == [0, 1, 2], key
    got = params(networks, "keras")
    assert float(got["model.optimizer.learning_rate"]) == pytest.approx(0.01)
    assert got["history.epochs"] == "3"


def test_hugging_face_trainer_logs_transformers_pipeline_log_history_and_args(networks):
    model, pyfunc = logged_model(networks, "bert")
    assert model.name == "hf_trainer"
    assert "transformers" in pyfunc.metadata.flavors
    predicted = pyfunc.predict(["good movie", "awful film"])
    assert len(predicted) == 2
    # logging_steps=1 over 2 epochs of 2 batches; eval_strategy='epoch' evaluates twice.
    assert [step for step, _ in curve(networks, "bert", "loss")] == [1, 2, 3, 4]
    assert [step for step, _ in curve(networks, "bert", "eval_loss")] == [2, 4]
    got = params(networks, "bert")
    assert got["args.num_train_epochs"] == "2" and got["args.seed"] == "7"
    assert got["args.per_device_train_batch_size"] == "8"


# -- Lightning's self.log tap ------------------------------------------------------------------

LIGHTNING_TAP_CELLS = [
    "%load_ext nbtrack",
    "import lightning as L\n"
    "import torch\n"
    "from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import (\n"
    "    _LoggerConnector)\n"
    "from torch.utils.data import DataLoader, TensorDataset\n"
    "\n"
    "original_log_metrics = _LoggerConnector.log_metrics\n"
    "torch.manual_seed(0)\n"
    "X = torch.randn(60, 3)\n"
    "y = X @ torch.tensor([1.0, -2.0, 0.5])\n"
    "loader = DataLoader(TensorDataset(X, y), batch_size=20)\n"
    "\n"
    "class Regressor(L.LightningModule):\n"
    "    def __init__(self, fail_at_epoch=None):\n"
    "        super().__init__()\n"
    "        self.fail_at_epoch = fail_at_epoch\n"
    "        self.layer = torch.nn.Linear(3, 1)\n"
    "\n"
    "    def training_step(self, batch, batch_idx):\n"
    "        x, target = batch\n"
    "        loss = torch.nn.functional.mse_loss(self.layer(x).squeeze(-1), target)\n"
    "        self.log('mse', loss, on_step=True, on_epoch=False)\n"
    "        if self.current_epoch == self.fail_at_epoch:\n"
    "            raise FloatingPointError('loss diverged')\n"
    "        return loss\n"
    "\n"
    "    def configure_optimizers(self):\n"
    "        return torch.optim.SGD(self.parameters(), lr=0.1)\n"
    "\n"
    "def trainer():\n"
    "    return L.Trainer(max_epochs=3, log_every_n_steps=1, logger=False,\n"
    "                     enable_checkpointing=False, enable_progress_bar=False,\n"
    "                     enable_model_summary=False)",
    "%%track -n fits\n"
    "regressor = Regressor()\n"
    "trainer().fit(regressor, loader)",
    "print('after a run:', _LoggerConnector.log_metrics is original_log_metrics)",
    "%%track -n diverges\n"
    "diverging = Regressor(fail_at_epoch=1)\n"
    "trainer().fit(diverging, loader)",
    "print('after a failure:', _LoggerConnector.log_metrics is original_log_metrics)",
]


def test_lightning_self_log_reaches_the_run_and_no_patch_outlives_the_cell(tmp_path, store,
                                                                           client):
    folder = tmp_path / "project"
    notebook = run_notebook(write_notebook(folder / "tap.ipynb", LIGHTNING_TAP_CELLS), folder,
                            allow_errors=True)
    printed = "".join(o.get("text", "") for cell in notebook.cells for o in cell.outputs)
    # Lightning's own log_metrics again, after a cell that ended and after one that raised.
    assert "after a run: True" in printed and "after a failure: True" in printed
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert runs["fits"].info.status == "FINISHED"
    assert runs["diverges"].info.status == "FAILED"
    # 3 batches an epoch, logged every step: 9 points over 3 epochs; the failing fit logged the
    # first epoch's 3 (the step that raised never reached log_metrics).
    fits = client.get_metric_history(runs["fits"].info.run_id, "mse")
    assert len(fits) == 9 and sorted(m.step for m in fits) == list(range(9))
    diverges = client.get_metric_history(runs["diverges"].info.run_id, "mse")
    assert sorted(m.step for m in diverges) == [0, 1, 2]
