"""``nbtrack`` on the command line: thin over batch, query and registry.

Exit codes: 0 success; 1 an execution or store operation failed; 2 bad input (usage).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nbtrack.errors import NbtrackError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbtrack",
        description="Notebook-native experiment tracking on MLflow.",
        epilog="Exit codes: 0 success, 1 an execution or the store failed, 2 bad input.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="Execute a notebook headless, tracked; print the board.")
    run.add_argument("notebook", type=Path, help="The .ipynb to execute.")
    run.add_argument("-o", "--outdir", type=Path, default=None,
                     help="Where executed notebooks go (default: runs/ beside the notebook).")
    run.add_argument("-e", "--experiment", help="MLflow experiment for the notebook's runs.")
    run.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")

    runs = commands.add_parser("runs", help="Print an experiment's leaderboard.")
    runs.add_argument("-e", "--experiment", help="Experiment (default: this folder's project).")
    runs.add_argument("-m", "--metric", help="Metric to rank by (default: the most common).")
    runs.add_argument("--asc", action="store_true", help="Rank lowest first.")
    runs.add_argument("--top", type=int, default=20, help="How many runs (default 20).")
    runs.add_argument("--format", choices=["table", "csv", "json"], default="table")
    return parser


def _print_board(experiment, metric=None, ascending=False, top=20, fmt="table") -> None:
    from nbtrack import query

    board = query.leaderboard(experiment=experiment, metric=metric, ascending=ascending, top=top)
    if fmt == "csv":
        print(board.to_csv(index=False), end="")
    elif fmt == "json":
        print(board.to_json(orient="records", date_format="iso"))
    else:
        shown = board.drop(columns=["run_id", "notebook"]).copy()
        if "models" in shown:
            shown["models"] = shown["models"].map(", ".join)
        shown["start_time"] = shown["start_time"].dt.strftime("%Y-%m-%d %H:%M:%S")
        ranked_by = board.attrs.get("metric")
        print(f"experiment '{experiment}'" + (f", ranked by {ranked_by}" if ranked_by else ""))
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def _run(args) -> int:
    from nbtrack import batch
    from nbtrack.config import resolve_experiment

    notebook = args.notebook
    if not notebook.is_file():
        raise NbtrackError(f"notebook {str(notebook)!r} not found.")
    outdir = args.outdir or notebook.resolve().parent / "runs"
    output = outdir / f"{notebook.stem}.out.ipynb"
    experiment = resolve_experiment(args.experiment, "", notebook.resolve().parent)
    try:
        batch.execute(notebook, output, experiment=experiment, progress=not args.no_progress)
    except Exception as error:
        print(f"nbtrack run: {notebook} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"executed notebook written to {output}")
    _print_board(experiment)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``nbtrack`` command line; return its exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "runs":
            _print_board(args.experiment or _default_experiment(), args.metric, args.asc,
                         args.top, args.format)
            return 0
    except NbtrackError as error:
        print(f"nbtrack {args.command}: {error}", file=sys.stderr)
        return 2
    return 2


def _default_experiment() -> str:
    from nbtrack.config import resolve_experiment

    return resolve_experiment(None, "", Path.cwd())


if __name__ == "__main__":
    sys.exit(main())
