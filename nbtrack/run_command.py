"""The ``nbtrack run`` command: one execution, a grid's, or an Optuna search's trials, with the
leaderboard of what ran. The command line's parsing is in :mod:`nbtrack.cli`.
"""

from __future__ import annotations

import sys
import time
import uuid

from nbtrack.cli import EXIT_FAILED, EXIT_OK, _print_board
from nbtrack.errors import BadOptionError, NbtrackError
from nbtrack.store import sweeps


def run(args) -> int:
    """Run ``nbtrack run``: check the options, execute, print each execution and the board."""
    from nbtrack import batch
    from nbtrack.config import resolve_experiment

    notebook = args.notebook
    _check_engine_options(args)
    if args.search:
        return _search(args)
    points = batch.sweep_points(args.parameter, args.grid)
    names = {name for point in points for name in point}
    for warning in batch.check_notebook(notebook, names):
        print(f"nbtrack run: warning: {warning}", file=sys.stderr)
    if args.engine == "local":  # the notebook is there: start the workers while we set up
        batch.warm_workers(args.jobs or 1)
    kernel = batch.choose_kernel(notebook, args.kernel)
    engine, jobs = _engine(args)  # a cluster that is out of reach stops it before any run
    experiment = resolve_experiment(args.experiment, "", notebook.resolve().parent)
    outdir = args.outdir or notebook.resolve().parent / "runs"
    if len(points) > 1:
        outdir = outdir / time.strftime(f"{notebook.stem}-%Y%m%d-%H%M%S")
    # Created here, not by the kernels: its artifacts then sit beside a default ./mlflow.db (a
    # kernel would resolve ./mlruns in the notebook's folder), and parallel kernels do not race.
    from nbtrack.store.kernel_state import absolute_tracking_uri
    from nbtrack.store.recorder import Recorder

    recorder = Recorder(absolute_tracking_uri())
    recorder.experiment_id(experiment)
    sweep = uuid.uuid4().hex[:12]
    parent = None
    if len(points) > 1:
        grid = {f"grid.{k}": v for k, v in (batch.parse_assignment(t, "--grid") for t in args.grid)}
        parent = sweeps.open_sweep(recorder, experiment, f"{notebook.stem} sweep", sweep,
                                   {**grid, **{f"fixed.{k}": v for k, v in
                                               batch.sweep_points(args.parameter, [])[0].items()}})
    executions = batch.plan(notebook, points, outdir, experiment, kernel, sweep, parent)
    results = batch.run_sweep(executions, jobs=jobs, progress=not args.no_progress,
                              retries=args.retries, engine=engine)
    if parent is not None:
        counts = {f"executions_{s.lower()}": sum(r.status == s for r in results)
                  for s in (batch.OK, batch.FAILED, batch.KILLED)}
        sweeps.close_sweep(recorder, parent, counts, {}, failed=counts["executions_ok"] == 0)
    failed = 0
    for result in results:
        point = ", ".join(f"{k}={v}" for k, v in result.execution.parameters.items())
        where = result.execution.output
        if result.status == batch.OK:
            print(f"ok      {where}" + (f"  ({point})" if point else "")
                  + (f": {result.reason}" if result.reason else ""))
        else:
            failed += 1
            print(f"{result.status:<7} {where}" + (f"  ({point})" if point else "")
                  + f": {result.reason}")
    print()
    try:
        _print_board(experiment, metric=args.metric,
                     filter=sweeps.trials_filter(sweep), top=len(points) * 20,
                     title=f"experiment '{experiment}', this run's executions")
    except NbtrackError as error:
        print(f"nbtrack run: no leaderboard: {error}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _search(args) -> int:
    """``nbtrack run --search``: an Optuna study over tracked executions (see nbtrack.search)."""
    from nbtrack import batch, search
    from nbtrack.config import resolve_experiment
    from nbtrack.store.kernel_state import absolute_tracking_uri
    from nbtrack.store.query import execution_metric
    from nbtrack.store.recorder import Recorder

    notebook = args.notebook
    fixed = batch.sweep_points(args.parameter, [])[0]
    dimensions = [search.parse_dimension(text) for text in args.search]
    for text in args.grid:  # a grid's values are searched as choices
        name, values = batch.parse_assignment(text, "--grid")
        dimensions.append(search.parse_dimension(f"{name}=choice({values})"))
    spec = search.Search(dimensions, args.trials, args.objective or "", args.minimize,
                         args.sampler, args.seed, fixed, args.prune, args.pruner,
                         args.prune_startup)
    batch.check_notebook(notebook, set(fixed))
    spec.check(batch.notebook_parameters(notebook))
    if args.engine == "local":
        batch.warm_workers(args.jobs or 1)
    kernel = batch.choose_kernel(notebook, args.kernel)
    engine, jobs = _engine(args)
    experiment = resolve_experiment(args.experiment, "", notebook.resolve().parent)
    name = spec.study_name(notebook)
    outdir = (args.outdir or notebook.resolve().parent / "runs") / name
    outdir.mkdir(parents=True, exist_ok=True)
    study = spec.study(name, args.study or f"sqlite:///{outdir / 'study.db'}")
    recorder = Recorder(absolute_tracking_uri())
    recorder.experiment_id(experiment)
    reason = "the search's driver stopped during this trial (Ctrl-C or killed); asked again"
    earlier, interrupted = search.earlier_trials(
        study, fixed, lambda execution: recorder.end_running_runs(experiment, execution, reason))
    # A resumed search keeps its sweep id and parent run: the board shows it as one sweep.
    sweep = study.user_attrs.get("nbtrack.sweep") or uuid.uuid4().hex[:12]
    parent = study.user_attrs.get("nbtrack.parent_run")
    if earlier or interrupted:
        print(f"nbtrack run: resuming search {name}: {len(earlier)} trial(s) finished before, "
              f"{interrupted} interrupted (asked again), "
              f"{max(0, spec.trials - len(earlier))} to go; executions in {outdir}",
              file=sys.stderr)
    if parent is None:
        space = {f"search.{d.name}": (f"choice{d.choices}" if d.kind == "choice"
                                      else f"{d.kind}({d.low:g}, {d.high:g})")
                 for d in dimensions}
        parent = sweeps.open_sweep(recorder, experiment, f"{notebook.stem} search", sweep, {
            **space, **{f"fixed.{k}": v for k, v in fixed.items()}, "sampler": spec.sampler,
            "objective": spec.objective, "direction": "minimize" if spec.minimize else "maximize",
            "trials": spec.trials, "seed": spec.seed, "study": name,
            "pruner": spec.pruner if spec.prune else "none"})
        study.set_user_attr("nbtrack.sweep", sweep)
        study.set_user_attr("nbtrack.parent_run", parent)
    trials = search.run_search(
        spec, study, search.plan_trial(notebook, outdir, experiment, sweep, kernel, parent,
                                       spec.objective if spec.prune else None),
        lambda executions: batch.run_sweep(executions, jobs=jobs, progress=False,
                                           retries=args.retries, engine=engine),
        lambda execution: execution_metric(experiment, execution.execution_id, spec.objective),
        jobs=jobs, progress=not args.no_progress, earlier=earlier)
    for trial in trials:
        point = ", ".join(f"{k}={v}" for k, v in trial.parameters.items())
        if trial.result is None:  # run before this search resumed
            status = {"COMPLETE": "ok", "PRUNED": "PRUNED"}.get(trial.state, "FAILED")
            reason = "(earlier)"
        else:
            status = (trial.result.status if trial.state == "COMPLETE"
                      or trial.result.status != "ok" else "FAILED")
            reason = trial.result.reason or ("" if trial.value is not None
                                             else f"its runs logged no {spec.objective!r}")
        score = f"{spec.objective}={trial.value:.6g}" if trial.value is not None else reason
        if trial.earlier and trial.value is not None:
            score += " (earlier)"
        print(f"trial {trial.number:<3} {status:<7} {point}: {score}")
    best = search.best_trial(trials, spec.minimize)
    counts = {"trials_complete": sum(t.state == "COMPLETE" for t in trials),
              "trials_failed": sum(t.state == "FAILED" for t in trials),
              "trials_pruned": sum(t.state == "PRUNED" for t in trials),
              "trials_interrupted": len([k for k in study.user_attrs
                                         if k.startswith(search.INTERRUPTED_ATTR + ".")])}
    best_tags = {}
    if best is not None:
        counts[f"best_{spec.objective}"] = best.value
        best_tags = {sweeps.BEST_TRIAL_TAG: str(best.number),
                     **{f"nbtrack.best.{k}": str(v) for k, v in best.parameters.items()}}
    sweeps.close_sweep(recorder, parent, counts, best_tags, failed=best is None)
    print()
    if best is not None:
        print(f"best: trial {best.number}, {spec.objective}={best.value:.6g} "
              f"({', '.join(f'{k}={v}' for k, v in best.parameters.items())})")
    try:
        _print_board(experiment, metric=spec.objective, ascending=spec.minimize,
                     filter=sweeps.trials_filter(sweep), top=len(trials) * 20,
                     title=f"experiment '{experiment}', this search's trials")
    except NbtrackError as error:
        print(f"nbtrack run: no leaderboard: {error}", file=sys.stderr)
    return EXIT_OK if best is not None else EXIT_FAILED


def _check_engine_options(args) -> None:
    """Refuse engine options that do not go together, before anything runs."""
    if args.jobs is not None and args.jobs < 1:
        raise BadOptionError("-j/--jobs takes a positive number.")
    if args.retries < 0:
        raise BadOptionError("--retries takes 0 or a positive number.")
    if args.engine != "ray":
        given = [option for option, value in (("--address", args.address),
                                              ("--cpus-per-trial", args.cpus_per_trial),
                                              ("--gpus-per-trial", args.gpus_per_trial))
                 if value is not None]
        if given:
            raise BadOptionError(f"{', '.join(given)} only go with --engine ray.")
    for option, value in (("--cpus-per-trial", args.cpus_per_trial),
                          ("--gpus-per-trial", args.gpus_per_trial)):
        if value is not None and value < 0:
            raise BadOptionError(f"{option} takes 0 or a positive number, got {value:g}.")
    if args.cpus_per_trial == 0 and not args.gpus_per_trial:
        raise BadOptionError("--cpus-per-trial 0 needs --gpus-per-trial: an execution must ask "
                             "for something, or Ray would start all of them at once.")


def _engine(args):
    """The engine executions run on, and how many run at once."""
    if args.engine != "ray":
        return None, args.jobs or 1
    from nbtrack.ray_engine import RayEngine

    cpus = 1.0 if args.cpus_per_trial is None else args.cpus_per_trial
    engine = RayEngine(args.address, cpus, args.gpus_per_trial or 0.0)
    return engine, args.jobs or engine.capacity()
