"""``nbtrack push``, ``export`` and ``import``: runs from one store to another, or to a file.

This module only parses and prints; the copying is :mod:`nbtrack.store.publish`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from pathlib import Path

from nbtrack.errors import NbtrackError

EXIT_OK, EXIT_FAILED = 0, 1


def add_commands(commands) -> None:
    """Add the publishing commands to the ``nbtrack`` parser."""
    push = commands.add_parser(
        "push", help="Copy runs, whole, to another tracking store (a team server).",
        description="Copy runs from this store (MLFLOW_TRACKING_URI, else ./mlflow.db) to\n"
                    "another: an MLflow server (http[s]://..., logged in with\n"
                    "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), a SQLite file or a\n"
                    "PostgreSQL database. Params, tags, every metric point (step, timestamp),\n"
                    "times and status, artifacts, dataset inputs, logged models (loadable from\n"
                    "the target) and parent/child links go along; a missing experiment is\n"
                    "created. Each copy is tagged with its origin (nbtrack.origin.store,\n"
                    "nbtrack.origin.run_id): pushing again skips runs already there and\n"
                    "finishes those a cut-short push left partial. --register also makes the\n"
                    "pushed runs' registered model versions on the target, with their aliases\n"
                    "(an alias the target already points elsewhere, its @champion say, moves\n"
                    "only with --move-aliases). A target that does not answer is waited for\n"
                    "($NBTRACK_PUSH_WAIT_SECONDS, default 60), then the push is kept in the\n"
                    "journal and `nbtrack sync` finishes it. Exit code 1 when any run or\n"
                    "version failed or the push was kept.",
        epilog="Examples:\n"
               "  export MLFLOW_TRACKING_USERNAME=alice MLFLOW_TRACKING_PASSWORD=...\n"
               "  nbtrack push -e churn --to https://mlflow.example.com\n"
               "  nbtrack push 3f2a9c1b... 8e41d07a... --to sqlite:///shared/mlflow.db\n"
               "  nbtrack push -e churn --register --move-aliases --to https://mlflow.example.com\n"
               "  nbtrack push --filter \"metrics.val_auc > 0.9\" --to "
               "postgresql://mlflow@db:5432/mlflow",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _selection(push, "push")
    push.add_argument("--to", required=True, metavar="URI", help="The target tracking URI.")
    push.add_argument("--register", action="store_true",
                      help="Also re-create the registered model versions of the pushed runs, and "
                           "their aliases where the target has none of that name.")
    push.add_argument("--move-aliases", action="store_true",
                      help="With --register: move aliases the target already points to other "
                           "versions (its @champion, say) to the pushed versions.")
    push.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    push.set_defaults(handler=_push)

    export = commands.add_parser(
        "export", help="Write runs, whole, to one file (a zip) for `nbtrack import`.",
        description="Write runs of this store, with everything `nbtrack push` copies, to one\n"
                    "zip: a small MLflow store and a manifest of every file's sha256.",
        epilog="Example: nbtrack export -e churn -o churn-runs.zip",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _selection(export, "export")
    export.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.zip",
                        help="The bundle to write.")
    export.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    export.set_defaults(handler=_export)

    load = commands.add_parser(
        "import", help="Copy the runs of an `nbtrack export` bundle into this store.",
        description="Check the bundle against its manifest (a corrupt or truncated one is\n"
                    "refused, and nothing is imported), then copy its runs into this store\n"
                    "(MLFLOW_TRACKING_URI, else ./mlflow.db) as `nbtrack push` does: importing\n"
                    "again skips runs already here.",
        epilog="Example: MLFLOW_TRACKING_URI=http://mlflow.example.com:5000 "
               "nbtrack import churn-runs.zip",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    load.add_argument("bundle", type=Path, metavar="FILE.zip", help="The bundle to import.")
    load.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    load.set_defaults(handler=_import)


def _selection(parser, verb: str) -> None:
    parser.add_argument("run_ids", nargs="*", metavar="RUN_ID", help=f"Runs to {verb}.")
    parser.add_argument("-e", "--experiment", help=f"{verb.capitalize()} this experiment's runs.")
    parser.add_argument("--filter", metavar="EXPR",
                        help=f"{verb.capitalize()} the runs matching this MLflow filter (in -e's "
                             "experiment, else in every experiment), e.g. \"params.C = '0.1'\".")


def _redactor(*uris: str):
    """Hides the login MLflow sends to servers and the passwords in ``uris`` (any URL password
    is hidden anyway).
    """
    import os

    from nbtrack.capture.secrets import Redactor

    redactor = Redactor(os.environ.get(name, "") for name in
                        ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"))
    redactor.add_from_namespace({f"uri{i}": uri for i, uri in enumerate(uris)})
    return redactor


def _push(args) -> int:
    from nbtrack.store import publish
    from nbtrack.store.kernel_state import absolute_tracking_uri

    _check_selection(args, "push")
    if args.move_aliases and not args.register:
        raise NbtrackError("--move-aliases moves the aliases --register makes: add --register.")
    source = absolute_tracking_uri()
    redact = _redactor(source, args.to)
    target = absolute_tracking_uri(args.to)
    if publish.without_credentials(source) == publish.without_credentials(target):
        raise NbtrackError("--to names the store the runs are in: push to another one.")
    runs = publish.select_runs(source, args.run_ids, args.experiment, args.filter)
    where = publish.without_credentials(target)
    if not runs:
        print(f"nothing to push: no runs matched in {publish.without_credentials(source)}")
        return EXIT_OK
    problem = _wait_for(target, where, redact)
    if problem is not None:
        return _keep(source, target, [run.info.run_id for run in runs], args, problem, redact)
    pusher = publish.Pusher(source, target)
    outcomes = _with_progress(runs, f"push to {where}", args.no_progress, redact,
                              lambda done: publish.push_runs(pusher, runs, done))
    code = _summary(outcomes, redact, f"target {where}")
    failed = [o.run_id for o in outcomes if o.state == publish.FAILED]
    if failed:  # the target may have gone away meanwhile: then sync finishes the push
        problem = publish.target_problem(target)
        if problem is not None:
            return _keep(source, target, failed, args, problem, redact)
    if args.register:
        code = max(code, _register(pusher, outcomes, args.move_aliases, redact))
    return code


def _wait_for(target: str, where: str, redact) -> str | None:
    """Wait for a target that does not answer, as the writer waits for a store (its pauses, up
    to ``$NBTRACK_PUSH_WAIT_SECONDS``); None once it answers, else why it does not.
    """
    import time

    from nbtrack.durable.pushes import push_wait_seconds
    from nbtrack.durable.writer import retry_pause
    from nbtrack.store import publish

    deadline = time.monotonic() + push_wait_seconds()
    for attempt in range(10**6):
        problem = publish.target_problem(target)
        if problem is None or time.monotonic() + retry_pause(attempt) > deadline:
            return problem
        if attempt == 0:
            print(redact.redact(f"waiting for {where}, which does not answer: {problem}"),
                  file=sys.stderr, flush=True)
        time.sleep(retry_pause(attempt))
    return problem


def _keep(source: str, target: str, run_ids: list[str], args, problem: str, redact) -> int:
    """Keep the runs a silent target could not take for `nbtrack sync`; exit code 1."""
    from nbtrack.durable import pushes
    from nbtrack.store.publish import without_credentials

    path = pushes.keep(pushes.KeptPush(source, target, tuple(run_ids), args.register,
                                       args.move_aliases))
    print(redact.redact(f"{without_credentials(target)} does not answer ({problem}): "
                        f"{len(run_ids)} run(s) kept in {path}; `nbtrack sync` pushes them "
                        "when it answers"), file=sys.stderr)
    return EXIT_FAILED


def sync_kept_pushes() -> tuple[int, int]:
    """Finish the pushes a silent target made wait (``nbtrack sync``); print a line each.
    Returns (pushes finished, pushes still kept).
    """
    from nbtrack.durable import pushes
    from nbtrack.store import publish

    finished = pending = 0
    for path, kept in pushes.kept():
        redact = _redactor(kept.source, kept.target)
        where = publish.without_credentials(kept.target)
        problem = publish.target_problem(kept.target)
        if problem is not None:
            pending += 1
            print(redact.redact(f"pending push of {len(kept.run_ids)} run(s) to {where}: "
                                f"{problem}; run `nbtrack sync` again when it answers"))
            continue
        try:
            runs = publish.select_runs(kept.source, kept.run_ids)
        except NbtrackError as error:
            pending += 1
            print(redact.redact(f"pending push to {where}: {error}"), file=sys.stderr)
            continue
        pusher = publish.Pusher(kept.source, kept.target)
        outcomes = publish.push_runs(
            pusher, runs, lambda outcome, redact=redact: print(redact.redact(_line(outcome))))
        failed = [o.run_id for o in outcomes if o.state == publish.FAILED]
        if kept.register:
            _register(pusher, outcomes, kept.move_aliases, redact)
        pushes.done(path)
        if failed:
            pushes.keep(pushes.KeptPush(kept.source, kept.target, tuple(failed), kept.register,
                                        kept.move_aliases))
            pending += 1
            print(redact.redact(f"push to {where}: {len(failed)} run(s) failed, kept for the "
                                "next `nbtrack sync`"))
        else:
            finished += 1
            states = Counter(o.state for o in outcomes)
            print(redact.redact(f"push to {where} finished: " + ", ".join(
                f"{count} {state}" for state, count in states.items())))
    return finished, pending


def _register(pusher, outcomes, move_aliases: bool, redact) -> int:
    """Push the registered versions of the pushed runs; print a line each and a summary."""
    from nbtrack.store import registry_push

    versions = registry_push.push_registrations(pusher, outcomes, move_aliases)
    for v in versions:
        line = f"{v.state:<13} model '{v.name}' version {v.version}"
        if v.target_version:
            line += f" -> version {v.target_version}"
        if v.aliases:
            line += "; " + ", ".join(f"@{alias} {what}" for alias, what in v.aliases)
        for alias, at in v.left_at:
            line += (f" (@{alias} still names version {at} there: --move-aliases moves it)")
        if v.detail:
            line += f": {v.detail}"
        print(redact.redact(line), file=sys.stderr if v.state == registry_push.FAILED
              else sys.stdout)
    count = {state: sum(v.state == state for v in versions) for state in
             (registry_push.REGISTERED, registry_push.ALREADY, registry_push.FAILED)}
    print(f"model versions: {count[registry_push.REGISTERED]} registered, "
          f"{count[registry_push.ALREADY]} already there, {count[registry_push.FAILED]} failed")
    sys.stdout.flush()
    return EXIT_FAILED if count[registry_push.FAILED] else EXIT_OK


def _check_selection(args, verb: str) -> None:
    if not (args.run_ids or args.experiment or args.filter):
        raise NbtrackError(f"say which runs to {verb}: RUN_ID ..., -e EXPERIMENT or "
                           "--filter EXPR.")


def _with_progress(runs, description, hidden, redact, work):
    """``work(done)``, with a bar of runs and a line as each run ends; its outcomes."""
    from tqdm import tqdm

    bar = tqdm(total=len(runs), unit="run", desc=description, file=sys.stderr,
               disable=hidden or None)

    copied = 0

    def done(outcome) -> None:
        nonlocal copied
        copied += outcome.size
        bar.set_postfix_str(f"{copied / 1e6:,.1f} MB", refresh=False)
        bar.update(1)
        bar.write(redact.redact(_line(outcome)), file=sys.stdout)

    try:
        return work(done)
    finally:
        bar.close()


def _line(outcome) -> str:
    """What happened to one run, in one line."""
    line = f"{outcome.state:<13} run '{outcome.name}' ({outcome.run_id})"
    if outcome.target_run_id:
        line += f" -> {outcome.target_run_id}"
    if outcome.detail:
        line += f": {outcome.detail}"
    if outcome.redacted:
        line += f" ({outcome.redacted} secret(s) left out or redacted)"
    return line


def _summary(outcomes, redact, where: str) -> int:
    from nbtrack.store import publish

    count = {state: sum(o.state == state for o in outcomes)
             for state in (publish.PUSHED, publish.FINISHED, publish.ALREADY, publish.FAILED)}
    summary = [f"{count[publish.PUSHED]} pushed"]
    if count[publish.FINISHED]:
        summary.append(f"{count[publish.FINISHED]} finished (left partial by an earlier push)")
    summary += [f"{count[publish.ALREADY]} already there", f"{count[publish.FAILED]} failed"]
    print(redact.redact(f"\n{', '.join(summary)}; {where}"))
    for outcome in outcomes:
        if outcome.state == publish.FAILED:
            print(redact.redact(f"failed: run '{outcome.name}' ({outcome.run_id}): "
                                f"{outcome.detail}"), file=sys.stderr)
    sys.stdout.flush()
    return EXIT_FAILED if count[publish.FAILED] else EXIT_OK


def _export(args) -> int:
    from nbtrack.store import bundle, publish
    from nbtrack.store.kernel_state import absolute_tracking_uri

    _check_selection(args, "export")
    source = absolute_tracking_uri()
    redact = _redactor(source)
    runs = publish.select_runs(source, args.run_ids, args.experiment, args.filter)
    if not runs:
        raise NbtrackError(f"no runs matched in {publish.without_credentials(source)}: "
                           "nothing was written.")
    outcomes = _with_progress(runs, f"export to {args.output}", args.no_progress, redact,
                              lambda done: bundle.export_runs(source, runs, args.output, done))
    failed = any(o.state == publish.FAILED for o in outcomes)
    code = _summary(outcomes, redact, f"bundle {args.output}" + (" not written" if failed else ""))
    return code


def _import(args) -> int:
    from nbtrack.store import bundle, publish
    from nbtrack.store.kernel_state import absolute_tracking_uri

    target = absolute_tracking_uri()
    redact = _redactor(target)
    folder, manifest = bundle.open_bundle(args.bundle)
    try:
        source, runs = bundle.bundle_runs(folder)
        pusher = publish.Pusher(source, target, keep_origin=True)
        where = publish.without_credentials(target)
        outcomes = _with_progress(runs, f"import to {where}", args.no_progress, redact,
                                  lambda done: publish.push_runs(pusher, runs, done))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return _summary(outcomes, redact, f"target {where} (runs exported from "
                                      f"{manifest.get('origin', '?')})")
