"""``nbtrack`` on the command line: thin over batch, query and registry.

Exit codes: 0 success; 1 an execution failed or was killed, a reproduction's metrics differ from
the original's, or the store refused an operation; 2 bad input (a missing notebook, a malformed
option, an unknown kernel, experiment, metric, run or model).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from nbtrack.config import TRACKING_URI_ENV
from nbtrack.errors import NbtrackError
from nbtrack.record import EXECUTION_TAG

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbtrack",
        description="Notebook-native experiment tracking on MLflow.",
        epilog="Exit codes: 0 success; 1 an execution failed or was killed, a reproduction's "
               "metrics differ from the original's, or the store refused an operation; 2 bad "
               "input.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="Execute a notebook headless (a sweep with --grid); print the leaderboard.",
        description="Execute a notebook headless, tracked: once, once per point of a grid, or\n"
                    "once per trial of an Optuna search. Values go after the notebook's\n"
                    "'parameters' cell, as papermill does. It runs on the kernel the notebook's\n"
                    "kernelspec names (python3 when it names none) unless -k names another.",
        epilog="Examples: nbtrack run train.ipynb -p seed=1 --grid C=0.01,0.1,1 -j 2\n"
               "          nbtrack run train.ipynb --search 'lr=loguniform(1e-4,1e-1)' "
               "--search 'depth=int(2,8)' --trials 20 --objective val_auc -j 2\n"
               "          nbtrack run train.ipynb --grid C=0.01,0.1,1 --engine ray "
               "--address auto --retries 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("notebook", type=Path, help="The .ipynb to execute.")
    run.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                     help="A parameter for every execution; repeatable. Python literals are "
                          "parsed (0.1, [1, 2], True); anything else is a string.")
    run.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                     help="Values to sweep; repeatable: one execution per combination.")
    run.add_argument("-j", "--jobs", type=int, default=None,
                     help="Executions at once (default 1; with --engine ray, as many as the "
                          "cluster holds).")
    run.add_argument("-k", "--kernel", metavar="NAME",
                     help="Kernel to execute on, instead of the one the notebook's kernelspec "
                          "names (see `jupyter kernelspec list`).")
    run.add_argument("-o", "--outdir", type=Path, default=None,
                     help="Where executed notebooks go (default: runs/ beside the notebook).")
    run.add_argument("-e", "--experiment", help="MLflow experiment for the runs "
                                                "(default: the project's name).")
    run.add_argument("-m", "--metric", help="Metric to rank the printed leaderboard by.")
    run.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    run.add_argument("--retries", type=int, default=0, metavar="N",
                     help="Run an execution again, up to N times, when its kernel or worker "
                          "dies mid-way (its runs end KILLED; default 0).")
    engine = run.add_argument_group(
        "engine", "Where executions run: worker processes on this machine (local, the\n"
                  "default), or tasks on a Ray cluster (pip install 'nbtrack[ray]'). Ray's\n"
                  "workers must reach the tracking store (a team server, or a shared file\n"
                  "system).")
    engine.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local (default) or ray.")
    engine.add_argument("--address", metavar="ADDR",
                        help="With --engine ray: the cluster (auto, HOST:PORT, ray://HOST:10001); "
                             "default: RAY_ADDRESS, else one running here, else a new local one.")
    engine.add_argument("--cpus-per-trial", type=float, default=None, metavar="N",
                        help="With --engine ray: CPUs each execution asks for (default 1).")
    engine.add_argument("--gpus-per-trial", type=float, default=None, metavar="N",
                        help="With --engine ray: GPUs each execution asks for (default 0).")
    search = run.add_argument_group(
        "search", "Let Optuna choose each execution's values from what earlier ones scored "
                  "(each trial is a tracked execution; its runs are tagged nbtrack.trial).")
    search.add_argument("--search", action="append", default=[], metavar="NAME=DIST",
                        help="A parameter to search; repeatable. DIST: uniform(a,b), "
                             "loguniform(a,b), int(a,b) or choice(v1,v2,...). --grid values are "
                             "searched as choices, -p values stay fixed.")
    search.add_argument("--trials", type=int, default=20, help="How many trials (default 20).")
    search.add_argument("--objective", metavar="METRIC",
                        help="The metric the notebook's runs log, to optimize.")
    search.add_argument("--minimize", action="store_true",
                        help="Minimize the objective (default: maximize).")
    search.add_argument("--sampler", default="tpe", choices=["tpe", "random"],
                        help="Optuna's sampler (default tpe).")
    search.add_argument("--seed", type=int, default=None, help="Seed of the sampler.")
    search.add_argument("--prune", action="store_true",
                        help="Stop a trial early when the objective's points it logs so far "
                             "(nbtrack.log_metric(OBJECTIVE, value, step=...)) are worse than "
                             "the median of earlier trials at the same step; its runs end KILLED "
                             "with the tag nbtrack.pruned=true and keep their points.")
    search.add_argument("--pruner", default="median", choices=["median", "hyperband"],
                        help="Optuna's pruner with --prune (default median).")
    search.add_argument("--prune-startup", type=int, default=3, metavar="N",
                        help="Trials that run in full before the median pruner prunes any "
                             "(default 3).")
    search.add_argument("--study", metavar="URL",
                        help="Optuna storage to keep the study in (e.g. sqlite:///study.db, "
                             "postgresql://...); default: study.db beside the executed "
                             "notebooks. The same command resumes an interrupted search: "
                             "finished trials are not run again; --trials N counts them.")

    runs = commands.add_parser("runs", help="Print an experiment's leaderboard.",
                               description="Print an experiment's runs ranked by a metric, the "
                                           "same ranking as the notebook's board.")
    runs.add_argument("-e", "--experiment", help="Experiment (default: this folder's project).")
    runs.add_argument("-m", "--metric", help="Metric to rank by (default: the most common).")
    runs.add_argument("--asc", action="store_true", help="Rank lowest first.")
    runs.add_argument("--top", type=int, default=20, help="How many runs (default 20).")
    runs.add_argument("--filter", help="MLflow filter, e.g. \"params.C = '0.1'\".")
    runs.add_argument("--format", choices=["table", "csv", "json"], default="table")
    runs.add_argument("--html", type=Path, metavar="FILE",
                      help="Also write the board as a standalone HTML page: the table, the "
                           "ranked metric against a param (the @champion's run marked), the "
                           "runs in parallel coordinates, and the curves of the top runs.")
    runs.add_argument("--param", metavar="NAME", help="The param --html plots the metric "
                      "against (default: the first numeric one that differs).")
    runs.add_argument("--sweep", metavar="ID", help="Only one sweep's or search's runs (its id: "
                      "tag nbtrack.sweep), ranked by the search's objective.")

    promote = commands.add_parser(
        "promote", help="Register a run's model and move an alias to the new version.",
        description="Register the model a run logged as a new version of MODEL and move ALIAS "
                    "(default champion) to it; prints the version and the alias's previous "
                    "holder.")
    promote.add_argument("run_id", help="The run whose logged model to register.")
    promote.add_argument("--model", required=True, help="Registered model name.")
    promote.add_argument("--alias", default="champion", help="Alias to move (default champion).")

    commands.add_parser(
        "sync", help="Record the runs ended kernels left in the journal; finish kept pushes.",
        description="Every kernel journals its runs ($NBTRACK_JOURNAL_DIR, default "
                    "~/.local/state/nbtrack/journal, one folder per kernel) before the store "
                    "has them. For each kernel that has ended (shut down while the store was "
                    "away, or killed): write its runs to the stores they were meant for, oldest "
                    "first, keeping their original times, and end the runs of cells it was "
                    "running as KILLED. Then finish the pushes `nbtrack push` kept because "
                    "their target did not answer. Prints what was pushed and what is still "
                    "pending; runs of kernels still running are listed, their kernels write "
                    "them. Exit code 1 while anything is pending.")

    _add_rebuild_commands(commands)
    from nbtrack import publish

    publish.add_commands(commands)  # push, export, import: each sets its handler

    ui = commands.add_parser("ui", help="Start MLflow's own UI on the store nbtrack uses.",
                             description="Start `mlflow ui` on the same store nbtrack writes to "
                                         "(MLFLOW_TRACKING_URI, else ./mlflow.db).")
    ui.add_argument("--host", default="127.0.0.1", help="Address to listen on (127.0.0.1).")
    ui.add_argument("--port", type=int, default=5000, help="Port (default 5000).")
    return parser


# How long `nbtrack runs` waits for running kernels to write the runs they have queued.
KERNEL_WAIT_SECONDS = 10.0


def _wait_for_running_kernels(limit: float = KERNEL_WAIT_SECONDS) -> None:
    """Read your writes from a shell too: give running kernels' background writers a moment to
    store the runs of cells that just ended; say so when some are still on their way.
    """
    from nbtrack.durable.journal import KernelJournal, kernel_folders, waiting_count

    def queued() -> int:
        count = 0
        for folder in kernel_folders():
            journal = KernelJournal.claim(folder)
            if journal is not None:  # an ended kernel's: `nbtrack sync` is for those
                journal.close()
                continue
            count += waiting_count(folder)
        return count

    deadline = time.monotonic() + limit
    waiting = queued()
    while waiting and time.monotonic() < deadline:
        time.sleep(0.2)
        waiting = queued()
    if waiting:
        print(f"nbtrack: {waiting} run(s) of running kernels are not in the store yet and not "
              "shown (the store is slow or away; they are written when it answers).",
              file=sys.stderr)


def _print_board(experiment, metric=None, ascending=False, top=20, fmt="table",
                 filter=None, title=None, html=None, param=None) -> None:
    from nbtrack.store import query

    _wait_for_running_kernels()
    board = query.leaderboard(experiment=experiment, metric=metric, ascending=ascending, top=top,
                              filter=filter)
    ranked_by = board.attrs.get("metric")
    caption = title or f"experiment '{experiment}'"
    if ranked_by:
        caption += f", ranked by {ranked_by}"
    if html is not None:
        from nbtrack.board import plots

        page = plots.page(board, caption, param)  # before printing: a bad --param is exit 2
    if fmt == "csv":
        print(board.to_csv(index=False), end="")
    elif fmt == "json":
        print(board.to_json(orient="records", date_format="iso"))
    else:
        from nbtrack.board import render

        shown = board.drop(columns=["notebook"]) if "notebook" in board else board
        print(render.text_table(shown, caption=caption))
    if html is not None:
        html.write_text(page, encoding="utf-8")
        print(f"nbtrack runs: wrote {html}", file=sys.stderr)


def _promote(args) -> int:
    from nbtrack.capture import lineage
    from nbtrack.store import query, registry

    run = query.get_run(args.run_id)
    models = registry.logged_models(run.info.run_id, run.info.experiment_id)
    if not models:
        raise NbtrackError(f"run {args.run_id!r} has no logged model: nothing was registered.")
    version = registry.register(models[-1].model_uri, args.model, run_id=run.info.run_id)
    previous = registry.set_alias(args.model, args.alias, version.version,
                                  moved_by=lineage.current_user(), notebook=None)
    was = f"v{previous.version}" if previous is not None else "nobody"
    print(f"registered {args.model} v{version.version} from run {args.run_id}; "
          f"@{args.alias} moved to v{version.version} (previously {was})")
    return EXIT_OK


def _sync(args) -> int:
    from nbtrack.config import journal_root
    from nbtrack.durable.journal import KernelJournal, kernel_folders, waiting_count
    from nbtrack.durable.writer import recover
    from nbtrack.publish import sync_kept_pushes
    from nbtrack.store.recorder import Recorder

    recorders: dict[str, Recorder] = {}

    def recorder_for(uri: str) -> Recorder:
        return recorders.setdefault(uri, Recorder(uri))

    result = recover(recorder_for)
    for record, outcome in result.written:
        print(f"pushed  run '{record.run_name}' ({outcome.run_id}) to {outcome.tracking_uri}")
    for name, run_id, uri in result.killed:
        print(f"killed  run '{name}' ({run_id}) in {uri}: its kernel ended while the cell ran")
    for problem in result.problems:
        print(f"nbtrack sync: {problem}", file=sys.stderr)
    live = 0
    for folder in kernel_folders():
        journal = KernelJournal.claim(folder)
        if journal is not None:  # an ended kernel's folder that recover left: still refused
            journal.close()
            continue
        count = waiting_count(folder)
        if count:
            live += count
            print(f"waiting {count} run(s) in {folder}: a running kernel writes them itself")
    if result.waiting:
        print(f"pending {result.waiting} run(s): the store still refuses them; "
              "run `nbtrack sync` again when it answers")
    pushed, pushes_pending = sync_kept_pushes()
    if not (result.written or result.killed or result.waiting or live or pushed
            or pushes_pending):
        print(f"nothing to sync: {journal_root()} holds no kept runs")
    elif not (result.waiting or live or pushes_pending):
        print("all kept runs are recorded")
    return EXIT_FAILED if result.waiting or live or pushes_pending else EXIT_OK


def _ui(args) -> int:
    from nbtrack.store.kernel_state import absolute_tracking_uri

    uri = absolute_tracking_uri()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(command, env={**os.environ, TRACKING_URI_ENV: uri})
    except KeyboardInterrupt:
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the ``nbtrack`` command line; return its exit code."""
    import logging

    args = _parser().parse_args(argv)
    # A command's output is its own: not MLflow's note that it is creating a new store's tables.
    # (Set on these loggers only, in this process: executed notebooks keep MLflow's levels.)
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if args.command == "run":
            from nbtrack.run_command import run

            return run(args)
        if args.command == "runs":
            experiment = args.experiment or _default_experiment()
            metric, ascending, where = args.metric, args.asc, args.filter
            if args.sweep:
                from nbtrack.store.query import sweep_objective

                objective = sweep_objective(experiment, args.sweep)
                if objective is not None and metric is None:
                    metric, ascending = objective
                from nbtrack.store.sweeps import trials_filter

                where = f"{trials_filter(args.sweep)} and {where}" if where \
                    else trials_filter(args.sweep)
            _print_board(experiment, metric, ascending, args.top, args.format, filter=where,
                         html=args.html, param=args.param)
            return EXIT_OK
        if args.command == "promote":
            return _promote(args)
        if args.command == "ui":
            return _ui(args)
        if args.command == "sync":
            return _sync(args)
        if args.command == "reproduce":
            return _reproduce(args)
        if args.command == "diff":
            return _diff(args)
        if getattr(args, "handler", None) is not None:
            return args.handler(args)
    except NbtrackError as error:
        print(f"nbtrack {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        again = "; the same command resumes a search" if args.command == "run" else ""
        print(f"\nnbtrack {args.command}: interrupted{again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # the store refused, or another failure outside the user's input
        from nbtrack.display import short_error

        print(f"nbtrack {args.command}: {short_error(error)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE


def _add_rebuild_commands(commands) -> None:
    reproduce = commands.add_parser(
        "reproduce", help="Write (and with --execute, run) a notebook that rebuilds a run.",
        description="Write a notebook that re-creates a run from its execution history (what "
                    "the kernel actually ran, in order, with the values it ran with), headed by "
                    "the source notebook, git commit, data digests, package versions and any "
                    "hidden state. With --execute, run it tracked (its run tagged "
                    "nbtrack.reproduces=RUN_ID), print original vs reproduced metrics and exit "
                    "1 when any differs beyond --rtol.",
        epilog="Example: nbtrack reproduce models:/invoice-classifier@champion --execute")
    reproduce.add_argument("run", metavar="RUN_ID_OR_MODEL_URI",
                           help="A run id, runs:/RUN_ID/..., models:/NAME@ALIAS or "
                                "models:/NAME/VERSION.")
    reproduce.add_argument("-o", "--output", type=Path, default=None, metavar="OUT.ipynb",
                           help="Where to write it (default: <notebook>-reproduce-<run>.ipynb "
                                "here).")
    reproduce.add_argument("--execute", action="store_true",
                           help="Run it and compare its metrics with the original's.")
    reproduce.add_argument("--rtol", type=float, default=None,
                           help="Relative tolerance for metrics to count as the same "
                                "(default 1e-9).")
    reproduce.add_argument("--minimal", action="store_true",
                           help="Keep only the history entries the tracked cell depends on.")

    diff = commands.add_parser(
        "diff", help="Show what differs between two runs.",
        description="Params, metrics, the tracked cell's source (a unified diff), data digests, "
                    "package versions and git commits that differ between two runs.",
        epilog="Example: nbtrack diff 3f2a9c1b... models:/invoice-classifier@champion")
    diff.add_argument("run_a", metavar="RUN_A", help="Run id or models:/ URI.")
    diff.add_argument("run_b", metavar="RUN_B", help="Run id or models:/ URI.")


def _facts(reference: str):
    from nbtrack.store import query, registry

    return query.run_facts(registry.run_of(reference))


def _reproduce(args) -> int:
    import nbtrack.reproduce as rebuild

    rtol = rebuild.DEFAULT_RTOL if args.rtol is None else args.rtol
    if rtol < 0:
        raise NbtrackError("--rtol takes a tolerance of 0 or more.")
    facts = _facts(args.run)
    plan = rebuild.plan(facts, minimal=args.minimal)
    output = rebuild.write(plan, args.output or rebuild.default_output(facts))
    print(f"wrote {output}: {len(plan.entries)} cell(s) from the history of run "
          f"'{facts.name}' ({facts.run_id})")
    for finding in plan.findings:
        print(f"nbtrack reproduce: hidden state: {finding.message}", file=sys.stderr)
    for note in plan.notes:
        print(f"nbtrack reproduce: note: {note}", file=sys.stderr)
    if not args.execute:
        installed = rebuild.installed_versions(facts.versions)
        for line in rebuild.drift(facts, installed=installed):
            print(f"nbtrack reproduce: warning: {line}", file=sys.stderr)
        return EXIT_OK
    result, reproduced = _execute_reproduction(facts, output)
    if reproduced is None:
        why = result.reason or "its tracked cell made no run"
        print(f"nbtrack reproduce: the reproduction did not run through: {why}", file=sys.stderr)
        return EXIT_FAILED
    verdict = rebuild.verdict(facts, reproduced, rtol)
    print(f"reproduced as run '{reproduced.name}' ({reproduced.run_id})\n")
    print(rebuild.metrics_table(verdict.metrics))
    for line in verdict.drift:
        print(f"nbtrack reproduce: warning: {line}", file=sys.stderr)
    if result.status != "ok":
        print(f"nbtrack reproduce: the reproduction {result.status}: {result.reason}",
              file=sys.stderr)
        return EXIT_FAILED
    if not verdict.ok:
        differ = ", ".join(c.key for c in verdict.metrics if not c.same)
        print(f"nbtrack reproduce: metrics differ from the original's beyond rtol={rtol}: "
              f"{differ}", file=sys.stderr)
        return EXIT_FAILED
    print(f"\nall {len(verdict.metrics)} metric(s) reproduced (rtol={rtol})")
    return EXIT_OK


def _execute_reproduction(facts, output: Path):
    """Run the reproduction notebook in place through nbtrack.batch; return how it ended and
    the reproduced run's facts (None when no run reproduces the original).
    """
    import nbtrack.reproduce as rebuild
    from nbtrack import batch
    from nbtrack.store import query
    from nbtrack.store.kernel_state import absolute_tracking_uri
    from nbtrack.store.recorder import Recorder

    Recorder(absolute_tracking_uri()).experiment_id(facts.experiment)
    execution = batch.Execution(output, output, {}, facts.experiment, uuid.uuid4().hex[:12],
                                cwd=rebuild.execution_folder(facts, output))
    print(f"executing {output} in {execution.cwd} ...", flush=True)
    result = batch.run_sweep([execution], jobs=1, progress=False)[0]
    runs = [r for r in query.runs_tagged(facts.experiment, EXECUTION_TAG,
                                         execution.execution_id)
            if r.data.tags.get(rebuild.REPRODUCES_TAG) == facts.run_id]
    return result, (query.run_facts(runs[-1].info.run_id) if runs else None)


def _diff(args) -> int:
    from nbtrack import diff

    print(diff.text(diff.compare(_facts(args.run_a), _facts(args.run_b))))
    return EXIT_OK


def _default_experiment() -> str:
    from nbtrack.store.query import default_experiment

    return default_experiment()


if __name__ == "__main__":
    sys.exit(main())
