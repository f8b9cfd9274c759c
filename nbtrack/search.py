"""``nbtrack run --search``: Optuna picks each execution's parameters from what earlier ones scored.

Each trial is an ordinary tracked execution of the notebook (as ``nbtrack run`` makes them), its
runs tagged with the trial's number; the objective is the metric its runs logged, read back from
the store, and told to Optuna's study (ask/tell). Up to ``jobs`` trials run at once.

The study is kept in Optuna's storage (a SQLite file beside the executed notebooks, or the one
``--study`` names) under a name made from the search's settings, so the same command after a
Ctrl-C or a killed driver resumes it: finished trials are not run again, and a trial that was
running is marked failed (its runs end KILLED) and its values are asked again.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbtrack.batch import Execution, ExecutionResult, Kernel, parse_assignment, parse_value
from nbtrack.errors import BadOptionError

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
_SPEC = re.compile(r"^\s*(?P<kind>[a-z]+)\s*\((?P<args>.*)\)\s*$")


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: ``NAME=uniform(a,b)``, ``loguniform(a,b)``, ``int(a,b)`` or
    ``choice(v1,v2,...)``.
    """

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def distribution(self):
        """The Optuna distribution it stands for."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high))
        return FloatDistribution(self.low, self.high, log=self.kind == "loguniform")


def parse_dimension(text: str) -> Dimension:
    """Parse one ``--search NAME=DIST``; raise BadOptionError saying what is wrong.

    >>> parse_dimension("lr=loguniform(1e-4, 1e-1)")
    Dimension(name='lr', kind='loguniform', low=0.0001, high=0.1, choices=())
    """
    name, spec = parse_assignment(text, "--search")
    match = _SPEC.match(spec)
    if match is None or match.group("kind") not in DISTRIBUTIONS:
        raise BadOptionError(
            f"--search {text!r}: {spec.strip()!r} is not a distribution; use one of "
            "uniform(a,b), loguniform(a,b), int(a,b), choice(v1,v2,...).")
    kind = match.group("kind")
    values = [parse_value(v.strip()) for v in match.group("args").split(",") if v.strip()]
    if kind == "choice":
        if not values:
            raise BadOptionError(f"--search {text!r}: choice(...) needs at least one value.")
        return Dimension(name, kind, choices=tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                   for v in values):
        raise BadOptionError(f"--search {text!r}: {kind}(a,b) takes two numbers.")
    low, high = values
    if not low < high:
        raise BadOptionError(f"--search {text!r}: {kind}(a,b) needs a < b.")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise BadOptionError(f"--search {text!r}: int(a,b) takes whole numbers.")
    if kind == "loguniform" and low <= 0:
        raise BadOptionError(f"--search {text!r}: loguniform(a,b) needs a > 0.")
    return Dimension(name, kind, float(low), float(high))


@dataclass
class Trial:
    """One trial: its Optuna number, parameters, and how its execution ended."""

    number: int
    parameters: dict
    result: ExecutionResult | None = None
    value: float | None = None
    state: str = "RUNNING"  # COMPLETE, PRUNED, FAILED (execution failed or no objective)
    earlier: bool = False  # run by an earlier invocation of a search this one resumes


@dataclass
class Search:
    """A search's settings, checked before anything runs."""

    dimensions: list[Dimension]
    trials: int
    objective: str
    minimize: bool = False
    sampler: str = "tpe"
    seed: int | None = None
    fixed: dict = field(default_factory=dict)
    prune: bool = False  # stop trials whose objective so far is worse than earlier trials'
    pruner: str = "median"  # Optuna's MedianPruner, or "hyperband"
    prune_startup: int = 3  # trials that run in full before any is pruned (median pruner)

    def check(self, notebook_names: set[str] | None) -> None:
        """Raise BadOptionError for a spec that cannot run: no objective, no trials, a name the
        notebook's parameters cell lacks, a name searched twice.
        """
        if not self.objective:
            raise BadOptionError("--search needs --objective METRIC: the metric to optimize.")
        if self.trials < 1:
            raise BadOptionError("--trials takes a positive number.")
        if self.sampler not in ("tpe", "random"):
            raise BadOptionError(f"--sampler {self.sampler!r}: use tpe or random.")
        if self.pruner not in ("median", "hyperband"):
            raise BadOptionError(f"--pruner {self.pruner!r}: use median or hyperband.")
        if self.prune_startup < 0:
            raise BadOptionError("--prune-startup takes a number of trials, 0 or more.")
        names = [d.name for d in self.dimensions]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise BadOptionError(f"--search: {', '.join(twice)} searched more than once.")
        if notebook_names is None:
            raise BadOptionError("--search: the notebook has no cell tagged 'parameters', so the "
                                 "searched values have nowhere to go.")
        missing = [n for n in names if n not in notebook_names]
        if missing:
            raise BadOptionError(
                f"--search: {', '.join(map(repr, missing))} not set in the notebook's parameters "
                f"cell (it sets: {', '.join(sorted(notebook_names)) or 'nothing'}).")

    def study_name(self, notebook: Path) -> str:
        """The study's name: the notebook's and a digest of what is searched, so the same
        command finds the same study and another search (other space, objective, direction,
        sampler, seed or fixed values) gets one of its own. The trial count is not in it: a
        larger ``--trials`` goes on with the study.
        """
        settings = json.dumps([str(notebook.resolve()), [repr(d) for d in self.dimensions],
                               self.objective, self.minimize, self.sampler, self.seed,
                               sorted((k, repr(v)) for k, v in self.fixed.items())]
                              + ([self.pruner, self.prune_startup] if self.prune else []))
        return f"{notebook.stem}-search-{hashlib.sha256(settings.encode()).hexdigest()[:10]}"

    def study(self, name: str, storage: str | None = None):
        """The search's Optuna study in ``storage`` (an Optuna storage URL; None: in memory),
        the one kept there under ``name`` if there is one.
        """
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = self._sampler(self.seed)
        if not self.prune:
            pruner = optuna.pruners.NopPruner()
        elif self.pruner == "hyperband":
            pruner = optuna.pruners.HyperbandPruner()
        else:
            pruner = optuna.pruners.MedianPruner(n_startup_trials=self.prune_startup)
        try:
            study = optuna.create_study(study_name=name, sampler=sampler, storage=storage,
                                        load_if_exists=True, pruner=pruner,
                                        direction="minimize" if self.minimize else "maximize")
        except Exception as error:
            raise BadOptionError(f"Optuna could not open or create the study {name!r} in "
                                 f"{storage!r} ({type(error).__name__}: {error}); name another "
                                 "storage with --study URL.") from error
        earlier = len(study.get_trials(deepcopy=False))
        if earlier and self.seed is not None:
            # Seeded as at the start, a resumed search would draw its first trials' values again.
            study.sampler = self._sampler(self.seed + earlier)
        return study

    def _sampler(self, seed: int | None):
        import optuna

        return (optuna.samplers.RandomSampler(seed=seed) if self.sampler == "random"
                else optuna.samplers.TPESampler(seed=seed))


EXECUTION_ATTR = "nbtrack.execution"  # on an Optuna trial: the execution that ran it
INTERRUPTED_ATTR = "nbtrack.interrupted"  # on the study, per trial: running when the driver stopped


def earlier_trials(study, fixed: dict,
                   end_interrupted: Callable[[str], object]) -> tuple[list[Trial], int]:
    """The trials a kept study already holds, for a search that resumes it.

    Trials left running by a driver that stopped (Ctrl-C, killed) are marked failed and
    ``interrupted``, their execution's runs ended with ``end_interrupted(execution_id)``, and their
    values queued to be asked again. Returns the finished trials and how many were interrupted.
    """
    import optuna

    states = optuna.trial.TrialState
    finished, interrupted = [], 0
    for kept in study.get_trials(deepcopy=False):
        if kept.state == states.RUNNING:
            if kept.user_attrs.get(EXECUTION_ATTR):
                end_interrupted(kept.user_attrs[EXECUTION_ATTR])
            study.set_user_attr(f"{INTERRUPTED_ATTR}.{kept.number}", True)
            study.tell(kept.number, state=states.FAIL)
            study.enqueue_trial(kept.params, skip_if_exists=False)
            interrupted += 1
        elif (kept.state == states.WAITING
              or study.user_attrs.get(f"{INTERRUPTED_ATTR}.{kept.number}")):
            continue  # queued to be asked again, or asked again already
        elif kept.state.is_finished():
            state = {states.COMPLETE: "COMPLETE", states.PRUNED: "PRUNED"}.get(kept.state,
                                                                                "FAILED")
            finished.append(Trial(kept.number, {**fixed, **kept.params},
                                  value=kept.value if state == "COMPLETE" else None,
                                  state=state, earlier=True))
    return finished, interrupted


def run_search(search: Search, study, make_execution: Callable[[int, dict], Execution],
               run_batch: Callable[[list[Execution]], list[ExecutionResult]],
               objective_of: Callable[[Execution], float | None], jobs: int = 1,
               progress: bool = True, earlier: Sequence[Trial] = ()) -> list[Trial]:
    """Ask Optuna for ``jobs`` trials at a time, run their executions, tell it what they scored,
    until ``earlier`` and the new trials make ``search.trials``.

    ``make_execution(number, parameters)`` names an execution, ``run_batch`` runs a list of them
    at once, ``objective_of`` reads the objective an execution's runs logged (None: none).
    Returns every trial, the earlier ones first.
    """
    from tqdm.auto import tqdm

    distributions = {d.name: d.distribution() for d in search.dimensions}
    trials: list[Trial] = list(earlier)
    with tqdm(total=search.trials, initial=min(len(trials), search.trials), desc="trials",
              unit="trial", disable=not progress, file=sys.stderr) as bar:
        while len(trials) < search.trials:
            batch = []
            for _ in range(min(jobs, search.trials - len(trials))):
                asked = study.ask(distributions)
                trial = Trial(asked.number, {**search.fixed, **asked.params})
                execution = make_execution(asked.number, trial.parameters)
                asked.set_user_attr(EXECUTION_ATTR, execution.execution_id)
                batch.append((asked, trial, execution))
            watcher = PruneWatcher(batch) if search.prune else None
            try:
                results = run_batch([execution for _, _, execution in batch])
            finally:
                if watcher is not None:
                    watcher.stop()
            import optuna

            for (asked, trial, _), result in zip(batch, results, strict=True):
                trial.result = result
                # result.execution: a retried execution ran under a new id
                trial.value = objective_of(result.execution) if result.status == "ok" else None
                if result.status == "PRUNED":
                    study.tell(asked, state=optuna.trial.TrialState.PRUNED)
                    trial.state = "PRUNED"
                elif trial.value is None or not math.isfinite(trial.value):
                    study.tell(asked, state=optuna.trial.TrialState.FAIL)
                    trial.state = "FAILED"
                else:
                    study.tell(asked, trial.value)
                    trial.state = "COMPLETE"
                trials.append(trial)
                bar.update(1)
                bar.set_postfix_str(_progress_note(trials, search))
    return trials


def _progress_note(trials: Sequence[Trial], search: Search) -> str:
    """The progress bar's note: trials done, pruned and failed, and the best so far."""
    counts = {state: sum(t.state == state for t in trials)
              for state in ("COMPLETE", "PRUNED", "FAILED")}
    note = f"{counts['COMPLETE']} done"
    if search.prune:
        note += f", {counts['PRUNED']} pruned"
    note += f", {counts['FAILED']} failed"
    best = best_trial(trials, search.minimize)
    if best is not None:
        note += f"; best {search.objective}={best.value:.4g} (trial {best.number})"
    return note


class PruneWatcher:
    """While a batch of trials runs (``--prune``): read the objective's points their kernels
    report, tell them to their Optuna trials, and prune a trial the pruner says is behind.
    A thread of the ``nbtrack run`` process, polling twice a second; no user code runs here.
    """

    POLL_SECONDS = 0.5

    def __init__(self, batch: Sequence[tuple[Any, Trial, Execution]]) -> None:
        import threading

        self._batch = [(asked, execution, {"offset": 0, "steps": set(), "pruned": False})
                       for asked, _, execution in batch]
        self._stopped = threading.Event()
        self.problem = ""
        self._thread = threading.Thread(target=self._watch, name="nbtrack-prune", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(self.POLL_SECONDS):
            self.poll()

    def poll(self) -> None:
        """Tell each trial the points reported since the last poll; prune those behind."""
        from nbtrack.capture.pruning import prune, read_reported

        for asked, execution, seen in self._batch:
            if seen["pruned"]:
                continue
            try:
                points, seen["offset"] = read_reported(execution.prune_folder, seen["offset"])
                for step, value in points:
                    if step not in seen["steps"] and math.isfinite(value):
                        seen["steps"].add(step)
                        asked.report(value, step)
                if points and asked.should_prune():
                    prune(execution.prune_folder)
                    seen["pruned"] = True
            except Exception as error:  # the trial then runs in full
                if not self.problem:
                    self.problem = f"pruning trial {asked.number}: {type(error).__name__}: {error}"
                    print(f"nbtrack run: warning: {self.problem}", file=sys.stderr)

    def stop(self) -> None:
        """Stop polling, after one last read of what the batch reported."""
        self._stopped.set()
        self._thread.join()
        self.poll()


def best_trial(trials: Sequence[Trial], minimize: bool) -> Trial | None:
    """The completed trial with the best objective."""
    done = [t for t in trials if t.state == "COMPLETE"]
    if not done:
        return None
    return (min if minimize else max)(done, key=lambda t: t.value)


def trial_label(number: int, parameters: dict) -> str:
    """The name of a trial's executed notebook: ``trial-003-lr=0.01-depth=4``."""
    label = "-".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in parameters.items())
    return f"trial-{number:03d}-" + re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)[:80]


def plan_trial(notebook: Path, outdir: Path, experiment: str, sweep_id: str,
               kernel: Kernel | None, parent_run: str | None = None,
               prune_objective: str | None = None) -> Callable[[int, dict], Execution]:
    """The ``make_execution`` of :func:`run_search` for one notebook and folder; with
    ``prune_objective``, each trial's kernel reports that metric's points (see PruneWatcher).
    """
    from nbtrack.capture.pruning import prepare

    def make(number: int, parameters: dict) -> Execution:
        output = outdir / f"{notebook.stem}-{trial_label(number, parameters)}.ipynb"
        folder = (prepare(outdir / "pruning" / f"trial-{number:03d}") if prune_objective
                  else None)
        return Execution(notebook, output, parameters, experiment, sweep_id, kernel=kernel,
                         trial=number, parent_run=parent_run, prune_folder=folder,
                         objective=prune_objective)

    return make
