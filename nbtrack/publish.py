"""``nbtrack push``, ``export`` and ``import``: runs from one store to another, or to a file.

This module only parses and prints; the copying is :mod:`nbtrack.store.publish`.
"""

from __future__ import annotations

import argparse
import sys

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
                    "finishes those a cut-short push left partial. Exit code 1 when any run\n"
                    "failed.",
        epilog="Examples:\n"
               "  export MLFLOW_TRACKING_USERNAME=alice MLFLOW_TRACKING_PASSWORD=...\n"
               "  nbtrack push -e churn --to https://mlflow.example.com\n"
               "  nbtrack push 3f2a9c1b... 8e41d07a... --to sqlite:///shared/mlflow.db\n"
               "  nbtrack push --filter \"metrics.val_auc > 0.9\" --to "
               "postgresql://mlflow@db:5432/mlflow",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    push.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="Runs to push.")
    push.add_argument("-e", "--experiment", help="Push this experiment's runs.")
    push.add_argument("--filter", metavar="EXPR",
                      help="Push the runs matching this MLflow filter (in -e's experiment, "
                           "else in every experiment), e.g. \"params.C = '0.1'\".")
    push.add_argument("--to", required=True, metavar="URI", help="The target tracking URI.")
    push.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    push.set_defaults(handler=_push)


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

    if not (args.run_ids or args.experiment or args.filter):
        raise NbtrackError("say which runs to push: RUN_ID ..., -e EXPERIMENT or --filter EXPR.")
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
    pusher = publish.Pusher(source, target)
    from tqdm import tqdm

    bar = tqdm(total=len(runs), unit="run", desc=f"push to {where}", file=sys.stderr,
               disable=args.no_progress or None)

    def done(outcome) -> None:
        bar.update(1)
        line = f"{outcome.state:<13} run '{outcome.name}' ({outcome.run_id})"
        if outcome.target_run_id:
            line += f" -> {outcome.target_run_id}"
        if outcome.detail:
            line += f": {outcome.detail}"
        bar.write(redact.redact(line), file=sys.stdout)

    try:
        outcomes = publish.push_runs(pusher, runs, done)
    finally:
        bar.close()
    count = {state: sum(o.state == state for o in outcomes)
             for state in (publish.PUSHED, publish.FINISHED, publish.ALREADY, publish.FAILED)}
    summary = [f"{count[publish.PUSHED]} pushed"]
    if count[publish.FINISHED]:
        summary.append(f"{count[publish.FINISHED]} finished (left partial by an earlier push)")
    summary += [f"{count[publish.ALREADY]} already there", f"{count[publish.FAILED]} failed"]
    print(redact.redact(f"\n{', '.join(summary)}; target {where}"))
    for outcome in outcomes:
        if outcome.state == publish.FAILED:
            print(redact.redact(f"failed: run '{outcome.name}' ({outcome.run_id}): "
                                f"{outcome.detail}"), file=sys.stderr)
    sys.stdout.flush()
    return EXIT_FAILED if count[publish.FAILED] else EXIT_OK
