"""The magics: ``%%track``, ``%track_config`` and ``%track_board`` parse what the user typed and
hand off to the tracker, the shell's hooks (:mod:`nbtrack.ipython.hooks`) and the board.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from nbtrack import display
from nbtrack.errors import BadOptionError
from nbtrack.ipython.hooks import ShellHooks, count_of_running_cell
from nbtrack.record import TrackOptions
from nbtrack.tracker import Tracker


def _parse(magic, line: str):
    """Parse a magic's arguments with shell quoting (``-n 'my run'`` gives ``my run``, where
    IPython's own splitting would keep the quotes).
    """
    try:
        argv = shlex.split(line)
    except ValueError as error:
        raise UsageError(f"{error} in {line.strip()!r}.") from None
    return magic.parser.parse_args(argv)


def _comma_list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _tags(pairs: list[str] | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadOptionError(f"-t/--tag takes KEY=VALUE, got {pair!r}.")
        tags[key.strip()] = value
    return tags


@magics_class
class TrackMagics(Magics):
    """``%%track`` turns a cell's execution into an MLflow run; ``%track_config`` sets defaults."""

    def __init__(self, shell, tracker: Tracker) -> None:
        super().__init__(shell)
        self.tracker = tracker
        self.hooks = ShellHooks(shell, tracker, self.parse_options)

    # -- magics ------------------------------------------------------------------------------

    @magic_arguments()
    @argument("-e", "--experiment", help="MLflow experiment (default: the project's name).")
    @argument("-n", "--name", help="Run name (default: notebook name and execution count).")
    @argument("-t", "--tag", action="append", metavar="KEY=VALUE", help="Run tag; repeatable.")
    @argument("--params", metavar="NAMES", help="Comma list of names to log as params, "
              "instead of detecting them.")
    @argument("--metrics", metavar="NAMES", help="Comma list of names to log as metrics, "
              "instead of detecting them.")
    @argument("--no-figures", action="store_true", help="Do not log the cell's figures.")
    @argument("--no-model", action="store_true", help="Do not log trained models.")
    @argument("--live", action="store_true", default=None,
              help="Draw logged series under the running cell, also in batch executions.")
    @argument("--no-live", action="store_false", dest="live",
              help="Do not draw logged series under the running cell.")
    @argument("--register", metavar="MODEL_NAME",
              help="Register the logged model as a new version of MODEL_NAME.")
    @cell_magic
    def track(self, line: str, cell: str):
        """Run the cell and record the execution as an MLflow run.

        Captured: params (literals the cell binds, simple values it reads from earlier cells,
        hyperparameters of estimators it fits), metrics (numbers it computes, and
        ``nbtrack.log_metric`` series), matplotlib figures, fitted scikit-learn models, the
        DataFrames and arrays it uses, and lineage (source, history, notebook, git, versions).

        Example::

            %%track -n logreg -t stage=baseline
            C = 0.1
            clf = LogisticRegression(C=C).fit(X_train, y_train)
            val_acc = clf.score(X_test, y_test)
        """
        options = self.parse_options(line)
        # Reached only when called directly (run_cell_magic): a typed %%track cell is run by
        # IPython itself, see the module docstring. Run the body as a cell of its own.
        count = count_of_running_cell(self.shell)
        self.hooks.begin(cell, options, count, cell_id=None, raw=f"%%track {line}\n{cell}")
        info_guard, self.hooks.tracked_info = self.hooks.tracked_info, None
        result = self.shell.run_cell(cell, store_history=False)
        self.hooks.tracked_info = info_guard
        self.tracker.end(self.shell.user_ns, result.error_in_exec or result.error_before_exec)

    @magic_arguments()
    @argument("-e", "--experiment", help="Experiment for the following tracked cells.")
    @line_magic
    def track_config(self, line: str) -> None:
        """Set the experiment for tracked cells, or show where tracked cells go.

        Example: ``%track_config -e churn-model``. Other settings: ``%config Nbtrack``.
        """
        args = _parse(self.track_config, line)
        if args.experiment is not None:
            self.tracker.settings.experiment = args.experiment.strip()
        experiment = self.tracker.experiment_for(None, Path.cwd())
        display.info(
            f"tracked cells go to experiment '{experiment}' in {self.tracker.recorder.tracking_uri}"
        )

    @magic_arguments()
    @argument("-e", "--experiment", help="Experiment (default: where tracked cells here go).")
    @argument("-m", "--metric", help="Metric to rank by (default: the one most runs have).")
    @argument("--asc", action="store_true", help="Rank lowest first (losses, errors).")
    @argument("--top", type=int, default=50, help="How many runs to show (default 50).")
    @line_magic
    def track_board(self, line: str):
        """Show the leaderboard: runs ranked by a metric, with Register and Set champion.

        Example: ``%track_board -m val_auc --top 20``. ``board = %track_board`` keeps the
        object, whose methods (``select``, ``register``, ``set_alias``, ``refresh``) do what
        its buttons do.
        """
        args = _parse(self.track_board, line)
        if args.top < 1:
            raise UsageError("%track_board: --top takes a positive number of runs.")
        return self.tracker.leaderboard(args.experiment, metric=args.metric, ascending=args.asc,
                                        top=args.top)

    def parse_options(self, line: str) -> TrackOptions:
        """Parse a ``%%track`` line's arguments; raise UsageError naming what is wrong."""
        try:
            args = _parse(self.track, line)
            return TrackOptions(
                experiment=args.experiment,
                name=args.name,
                tags=_tags(args.tag),
                params=_comma_list(args.params),
                metrics=_comma_list(args.metrics),
                figures=not args.no_figures,
                model=not args.no_model,
                register=args.register,
                live=args.live,
            )
        except BadOptionError as error:
            raise UsageError(f"%%track: {error}") from None
        except (UsageError, ValueError) as error:  # ValueError: shlex on unbalanced quotes
            raise UsageError(f"%%track: {error} See %%track? for the options.") from None
