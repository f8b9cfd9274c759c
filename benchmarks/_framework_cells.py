"""The framework cells of the ``cell_overhead`` benchmark: an XGBoost and a PyTorch cell, each as
written with ``%%track``, logged by hand with ``mlflow.<flavor>.log_model``, and with MLflow's
autolog, plus what their runs must hold once read back.

Not a benchmark itself (the runner skips modules whose name starts with ``_``); the timing loop,
the shell and the report are in :mod:`benchmarks.cell_overhead`.

``mlflow.pytorch.autolog()`` is no baseline for the PyTorch cell: it patches only Lightning's
``Trainer.fit`` and TensorBoard's ``SummaryWriter``, so a plain ``torch.optim`` loop records
nothing. The benchmark shows this rather than assuming it (:data:`TORCH_AUTOLOG_PROBE`): it runs
the cell once with it turned on and reports what the run holds.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTOLOG_EXPERIMENT = "cell-overhead-autolog"
NUM_BOOST_ROUND = 50
TORCH_EPOCHS = 30

# Run once after the notebook's setup cells, untimed in every variant: the imports and sizes a
# notebook with these cells would have in an early cell.
SETUP = f"""\
import torch
import xgboost as xgb
from torch import nn

import mlflow.pytorch
import mlflow.xgboost

num_boost_round = {NUM_BOOST_ROUND}
torch_epochs = {TORCH_EPOCHS}
autolog_experiment_id = mlflow.get_experiment_by_name({AUTOLOG_EXPERIMENT!r}).experiment_id
"""

_XGBOOST_BODY = """\
params = {"objective": "binary:logistic", "eval_metric": "logloss", "max_depth": 3, "eta": 0.1,
          "seed": seed}
dtrain = xgb.DMatrix(X_train, label=y_train)
dtest = xgb.DMatrix(X_test, label=y_test)
evals_result = {}
booster = xgb.train(params, dtrain, num_boost_round=num_boost_round, evals=[(dtest, "test")],
                    evals_result=evals_result, verbose_eval=False)
val_auc = roc_auc_score(y_test, booster.predict(dtest))
"""

_TORCH_BODY = """\
torch.manual_seed(seed)
lr = 0.01
hidden = 16
xb = torch.tensor(((X_train - X_train.mean()) / X_train.std()).to_numpy(), dtype=torch.float32)
yb = torch.tensor(y_train.to_numpy(), dtype=torch.float32).unsqueeze(1)
xv = torch.tensor(((X_test - X_train.mean()) / X_train.std()).to_numpy(), dtype=torch.float32)
net = nn.Sequential(nn.Linear(xb.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 1))
optimizer = torch.optim.Adam(net.parameters(), lr=lr)
loss_fn = nn.BCEWithLogitsLoss()
for epoch in range(torch_epochs):
    optimizer.zero_grad()
    loss = loss_fn(net(xb), yb)
    loss.backward()
    optimizer.step()
    nbtrack.log_metric("train_loss", loss.item(), step=epoch)
with torch.no_grad():
    val_auc = roc_auc_score(y_test, net(xv).squeeze(1).numpy())
"""


def _indent(code: str) -> str:
    return "".join("    " + line if line.strip() else line for line in code.splitlines(True))


_DATASETS_BY_HAND = """\
mlflow.log_input(mlflow.data.from_pandas(X_train, name="X_train"), context="training")
mlflow.log_input(mlflow.data.from_pandas(y_train.to_frame(), name="y_train"), context="training")
mlflow.log_input(mlflow.data.from_pandas(X_test, name="X_test"), context="validation")
mlflow.log_input(mlflow.data.from_pandas(y_test.to_frame(), name="y_test"), context="validation")
"""


@dataclass(frozen=True)
class FrameworkCell:
    """One framework cell in its variants, and the content each run must hold.

    ``autolog`` is None where MLflow has no autolog for the cell's code; ``autolog_on`` /
    ``autolog_off`` run untimed around the autolog variant, as a notebook's earlier cell would.
    """

    name: str
    flavor: str
    body: str  # without the %%track line; nbtrack.log_metric calls as in a notebook
    hand: str  # the body with MLflow's fluent API: params, metrics, series, datasets, model
    autolog: str | None
    autolog_on: str
    autolog_off: str
    metrics: tuple[str, ...]  # metrics every variant's run must have
    series: dict[str, int]  # stepped metric -> its number of steps
    models: tuple[str, ...]  # models the tracked and hand-written runs must have, READY
    datasets: tuple[str, ...]

    @property
    def source(self) -> str:
        return f"%%track -n {self.name}\n{self.body}"


XGBOOST = FrameworkCell(
    name="xgboost-train",
    flavor="xgboost",
    body=_XGBOOST_BODY,
    hand=('with mlflow.start_run(run_name="xgboost-train", experiment_id=hand_experiment_id):\n'
          + _indent(_XGBOOST_BODY) + _indent(
              'mlflow.log_params({**params, "num_boost_round": num_boost_round, "seed": seed,\n'
              '                   "test_size": test_size})\n'
              'for step, value in enumerate(evals_result["test"]["logloss"]):\n'
              '    mlflow.log_metric("test-logloss", value, step=step)\n'
              'mlflow.log_metric("val_auc", val_auc)\n'
              + _DATASETS_BY_HAND
              + 'mlflow.xgboost.log_model(booster, name="booster", input_example=X_train.head(5))\n')),
    # autolog logs params, the evaluation curve, the model and the DMatrix datasets itself; the
    # cell's own score is the one thing left to log.
    autolog=('with mlflow.start_run(run_name="xgboost-train", experiment_id=autolog_experiment_id):\n'
             + _indent(_XGBOOST_BODY) + '    mlflow.log_metric("val_auc", val_auc)\n'),
    autolog_on="mlflow.xgboost.autolog(silent=True)",
    autolog_off="mlflow.xgboost.autolog(disable=True, silent=True)",
    metrics=("val_auc", "test-logloss"),
    series={"test-logloss": NUM_BOOST_ROUND},
    models=("booster",),
    datasets=("X_train", "y_train", "X_test", "y_test"),
)

TORCH = FrameworkCell(
    name="torch-mlp",
    flavor="pytorch",
    body=_TORCH_BODY,
    hand=('with mlflow.start_run(run_name="torch-mlp", experiment_id=hand_experiment_id):\n'
          + _indent(_TORCH_BODY.replace("nbtrack.log_metric(", "mlflow.log_metric(")) + _indent(
              'mlflow.log_params({"lr": lr, "hidden": hidden, "torch_epochs": torch_epochs,\n'
              '                   "seed": seed, "test_size": test_size,\n'
              '                   "optimizer.class": type(optimizer).__name__,\n'
              '                   **{f"optimizer.{key}": value\n'
              '                      for key, value in optimizer.defaults.items()\n'
              '                      if isinstance(value, (str, int, float, bool, tuple))}})\n'
              'mlflow.log_metrics({"val_auc": val_auc, "loss": loss.item()})\n'
              + _DATASETS_BY_HAND
              + 'mlflow.pytorch.log_model(net, name="net", input_example=xb[:5].numpy())\n')),
    autolog=None,
    autolog_on="mlflow.pytorch.autolog(silent=True)",
    autolog_off="mlflow.pytorch.autolog(disable=True, silent=True)",
    metrics=("val_auc", "loss", "train_loss"),
    series={"train_loss": TORCH_EPOCHS},
    models=("net",),
    datasets=("X_train", "y_train", "X_test", "y_test"),
)

CELLS = (XGBOOST, TORCH)

# The PyTorch cell run once with mlflow.pytorch.autolog() on, untimed, to show what it records.
TORCH_AUTOLOG_PROBE = (
    'with mlflow.start_run(run_name="torch-mlp-autolog-probe", '
    'experiment_id=autolog_experiment_id):\n'
    + _indent(_TORCH_BODY.replace("nbtrack.log_metric(", "log_metric_noop(")))
TORCH_AUTOLOG_NOTE = (
    "no autolog baseline for the PyTorch cell: mlflow.pytorch.autolog() patches only Lightning's "
    "Trainer.fit and TensorBoard's SummaryWriter, so a plain torch.optim loop logs nothing")


def check_run(client, run, cell: FrameworkCell, variant: str, logged_models: list) -> list[str]:
    """What the run of one variant of ``cell`` lacks (empty when it holds what it should)."""
    found = []
    if run.info.status != "FINISHED":
        found.append(f"status {run.info.status}")
    if run.info.run_name != cell.name:
        found.append(f"run name {run.info.run_name!r}")
    found += [f"metric {name!r} missing" for name in cell.metrics if name not in run.data.metrics]
    for name, steps in cell.series.items():
        have = len(client.get_metric_history(run.info.run_id, name))
        if have != steps:
            found.append(f"series {name!r} has {have} steps, not {steps}")
    ready = sorted(m.name for m in logged_models if str(m.status) == "READY")
    if variant == "autolog":  # autolog names its model itself
        if not ready:
            found.append("no model READY")
        return found
    if ready != sorted(cell.models):
        states = ", ".join(f"{m.name} {m.status}" for m in logged_models) or "none"
        found.append(f"models ready {ready}, not {sorted(cell.models)} (logged: {states})")
    datasets = sorted(d.dataset.name for d in run.inputs.dataset_inputs)
    if datasets != sorted(cell.datasets):
        found.append(f"datasets {datasets}, not {sorted(cell.datasets)}")
    return found


def differences(tracked, other, label: str) -> tuple[list[str], list[str]]:
    """How the params and metrics of a tracked run differ from another variant's run of the
    same cell: params as notes (each way names them its own way), metric values as problems
    when they disagree. Returns ``(notes, problems)``.
    """
    t_params, o_params = tracked.data.params, other.data.params
    notes = []
    only_tracked = sorted(set(t_params) - set(o_params))
    only_other = sorted(set(o_params) - set(t_params))
    if only_tracked or only_other:
        notes.append(f"params only %%track: {only_tracked or 'none'}; only {label}: "
                     f"{only_other or 'none'}")
    problems = [f"metric {name!r}: %%track {tracked.data.metrics[name]}, {label} "
                f"{other.data.metrics[name]}"
                for name in sorted(set(tracked.data.metrics) & set(other.data.metrics))
                if abs(tracked.data.metrics[name] - other.data.metrics[name])
                > 1e-6 * max(1.0, abs(other.data.metrics[name]))]
    return notes, problems
