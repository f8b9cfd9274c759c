"""A sweep's parent run: one MLflow run per ``nbtrack run`` sweep or search, its executions' runs
its children (``mlflow.parentRunId``), so the MLflow UI and the board group them.

The parent holds what the sweep was (its search space or grid, the sampler, the objective) and,
once it ends, how it went: the best trial's params and objective, and counts of trials by state.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from nbtrack.record import EXECUTION_TAG, SWEEP_TAG

SWEEP_PARENT_TAG = "nbtrack.sweep_parent"  # on the parent: it is a sweep's, not a cell's
BEST_TRIAL_TAG = "nbtrack.best_trial"  # on a search's parent once it ends: its best trial's number


def trials_filter(sweep_id: str) -> str:
    """MLflow's filter for the runs a sweep's executions made (its parent run left out)."""
    return (f"tags.`{SWEEP_TAG}` = '{sweep_id.replace(chr(39), '')}' "
            f"and tags.`{EXECUTION_TAG}` != ''")


def open_sweep(recorder, experiment: str, name: str, sweep_id: str,
               params: Mapping[str, str]) -> str:
    """Create the sweep's parent run (RUNNING) in ``experiment``; return its id."""
    from mlflow.entities import Param, RunTag

    client = recorder.client
    run = client.create_run(
        recorder.experiment_id(experiment), run_name=name,
        start_time=int(time.time() * 1000),
        tags={SWEEP_TAG: sweep_id, SWEEP_PARENT_TAG: "true", "mlflow.runName": name,
              "mlflow.source.type": "PROJECT"})
    client.log_batch(run.info.run_id,
                     params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                     tags=[RunTag("mlflow.note.content", f"Sweep {sweep_id} of nbtrack run.")])
    return run.info.run_id


def close_sweep(recorder, run_id: str, metrics: Mapping[str, float],
                tags: Mapping[str, str], failed: bool = False) -> None:
    """Record how the sweep went on its parent run and end it."""
    from mlflow.entities import Metric, RunTag

    client = recorder.client
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED", end_time=now)


@dataclass(frozen=True)
class Sweep:
    """A sweep as its parent run tells it: what the board offers to filter by."""

    sweep_id: str
    name: str
    start_time: int
    objective: str | None = None  # None for a grid sweep
    minimize: bool = False
    best_trial: str | None = None  # the trial number, once the search has ended

    @property
    def label(self) -> str:
        """What a menu shows: its name, id and when it started."""
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.start_time / 1000))
        return f"{self.name} ({self.sweep_id}, {started})"


def sweeps_in(client, experiment_id: str, sweep_id: str | None = None) -> list[Sweep]:
    """The sweeps of an experiment (or the one ``sweep_id`` names), newest first."""
    where = f"tags.`{SWEEP_PARENT_TAG}` = 'true'"
    if sweep_id:
        where += f" and tags.`{SWEEP_TAG}` = '{sweep_id.replace(chr(39), '')}'"
    parents = client.search_runs([experiment_id], filter_string=where, max_results=1000,
                                 order_by=["attributes.start_time DESC"])
    return [Sweep(run.data.tags.get(SWEEP_TAG, ""), run.info.run_name or run.info.run_id,
                  run.info.start_time or 0, run.data.params.get("objective"),
                  run.data.params.get("direction") == "minimize",
                  run.data.tags.get(BEST_TRIAL_TAG)) for run in parents]
