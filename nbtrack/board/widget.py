"""The in-notebook leaderboard: rank runs, compare them, register a model, move its champion alias.

Every button calls a method of :class:`Leaderboard` (``register``, ``set_alias``, ``refresh``,
``select``), and those methods are what notebooks and tests call too. Without a live widget frontend
(nbconvert, a notebook rendered on a code host, terminal IPython) the board shows as the static HTML
and text tables that travel in the same display bundle as the widget view.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable

import ipywidgets as widgets

from nbtrack import display
from nbtrack.board import plots, render
from nbtrack.errors import NbtrackError
from nbtrack.store import query, registry, sweeps


def _with_class(widget, name: str):
    widget.add_class(name)
    return widget


class Leaderboard(widgets.VBox):
    """An experiment's runs ranked by a metric, with Register and Set champion.

    Parameters
    ----------
    experiment
        Experiment name; default: the one tracked cells here go to.
    metric
        Metric to rank by; default: the metric most runs have.
    ascending
        Rank lowest first (losses, errors).
    top
        How many runs to show.
    sweep
        Only the runs of one ``nbtrack run`` sweep or search (its id, tag ``nbtrack.sweep``),
        ranked by the search's objective, its best trial marked; the "sweep" menu chooses too.

    Examples
    --------
    >>> board = nbtrack.leaderboard(metric="val_auc")  # doctest: +SKIP
    >>> board.select(board.runs.run_id[0]); board.register("invoice-classifier")  # doctest: +SKIP
    >>> board.set_alias("champion")  # doctest: +SKIP

    """

    def __init__(self, experiment=None, metric=None, ascending=False, top=50, tracker=None,
                 tracking_uri=None, filter=None, notebook: str | None = None,
                 user: Callable[[], str] = lambda: "", sweep: str | None = None):
        # Given, never reached for: the kernel's tracker (the board waits for its writes and
        # refreshes after each run), the notebook, and who is logged in when a champion moves.
        self._tracker = tracker
        self._notebook = notebook
        self._user = user
        self.experiment = experiment or query.default_experiment()
        self.top = top
        self.tracking_uri = tracking_uri
        self.runs = None  # the ranked DataFrame shown
        self._table = None  # the listed runs as search_runs returns them, every metric a column
        self._versions: dict[str, list] = {}
        self._metric = metric
        self._refreshing = False
        self._refresh_lock = threading.RLock()
        self._history = plots.HistoryCache(tracking_uri)  # series read once per (run, key)
        self._sweeps: dict = {}  # sweep id -> nbtrack.store.sweeps.Sweep
        self._best: set[str] = set()  # the shown runs of the chosen search's best trial

        self.metric_choice = _with_class(widgets.Dropdown(description="rank by"), "nbtrack-metric")
        self.ascending_toggle = _with_class(
            widgets.ToggleButton(value=ascending, description="lowest first",
                                 tooltip="Rank the lowest values first (losses, errors)"),
            "nbtrack-sort")
        self.filter_box = _with_class(
            widgets.Text(value=filter or "", continuous_update=False,
                         placeholder="params.C = '0.1' and metrics.val_auc > 0.9",
                         description="filter", layout=widgets.Layout(width="420px")),
            "nbtrack-filter")
        self.sweep_choice = _with_class(
            widgets.Dropdown(options=[("all runs", "")], value="", description="sweep"),
            "nbtrack-sweep")
        if sweep:  # the menu lists the experiment's sweeps at the first refresh
            self.sweep_choice.options = [("all runs", ""), (sweep, sweep)]
            self.sweep_choice.value = sweep
        self.refresh_button = _with_class(widgets.Button(description="Refresh", icon="refresh"),
                                          "nbtrack-refresh")
        self.table = _with_class(widgets.HTML(), "nbtrack-table")
        self.param_choice = _with_class(widgets.Dropdown(options=[], description="against"),
                                        "nbtrack-param")
        self.plots = _with_class(widgets.HTML(), "nbtrack-plots")
        self.selector = _with_class(
            widgets.SelectMultiple(options=[], rows=6, description="runs",
                                   layout=widgets.Layout(width="640px")),
            "nbtrack-select")
        self.model_name = _with_class(widgets.Text(value=experiment, description="model"),
                                      "nbtrack-model-name")
        self.register_button = _with_class(
            widgets.Button(description="Register", button_style="primary",
                           tooltip="Register the selected run's model as a new version"),
            "nbtrack-register")
        self.version_choice = _with_class(widgets.Dropdown(options=[], description="version"),
                                          "nbtrack-version")
        self.alias = _with_class(widgets.Text(value="champion", description="alias"),
                                 "nbtrack-alias")
        self.set_alias_button = _with_class(
            widgets.Button(description="Set champion", button_style="warning",
                           tooltip="Move the alias to the chosen version"),
            "nbtrack-set-alias")
        self.confirm_button = _with_class(
            widgets.Button(description="Confirm move", button_style="danger",
                           layout=widgets.Layout(display="none")),
            "nbtrack-confirm")
        self.candidate = _with_class(widgets.HTML(), "nbtrack-candidate")
        self.message = _with_class(widgets.HTML(), "nbtrack-message")
        self.comparison = _with_class(widgets.HTML(), "nbtrack-compare")

        self.metric_choice.observe(lambda change: self._on_metric(change["new"]), names="value")
        self.ascending_toggle.observe(lambda _: self.refresh(), names="value")
        self.filter_box.observe(lambda _: self.refresh(), names="value")
        self.sweep_choice.observe(lambda change: self._on_sweep(change["new"]), names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.param_choice.observe(lambda _: self._refreshing or self._draw(), names="value")
        self.selector.observe(lambda change: self._on_selection(change["new"]), names="value")
        self.version_choice.observe(lambda _: self.show_candidate(), names="value")
        self.alias.observe(lambda _: self.show_candidate(), names="value")
        self.register_button.on_click(lambda _: self.register())
        self.set_alias_button.on_click(lambda _: self.request_alias_move())
        self.confirm_button.on_click(lambda _: self.set_alias(self.alias.value))

        super().__init__(children=[
            widgets.HBox([self.metric_choice, self.ascending_toggle, self.filter_box,
                          self.sweep_choice, self.refresh_button],
                         layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self.table, widgets.VBox([self.param_choice, self.plots])],
                         layout=widgets.Layout(flex_flow="row wrap")),
            self.selector,
            widgets.HBox([self.model_name, self.register_button]),
            widgets.HBox([self.version_choice, self.alias, self.set_alias_button,
                          self.confirm_button]),
            self.candidate,
            self.message,
            self.comparison,
        ])
        self.add_class("nbtrack-board")
        if sweep:
            self._on_sweep(sweep)
        else:
            self.refresh()
        if self._tracker is not None:
            self._tracker.on_run_recorded(self.refresh)

    # -- what the controls do ----------------------------------------------------------------

    @property
    def metric(self) -> str | None:
        """The metric the board ranks by."""
        return self._metric

    @property
    def ascending(self) -> bool:
        """True when the lowest values rank first."""
        return bool(self.ascending_toggle.value)

    def refresh(self) -> None:
        """Read the runs again and redraw; a bad filter leaves the last table and says why."""
        with self._refresh_lock:  # the writer's and the run index's threads refresh it too
            self._refresh()

    def _refresh(self) -> None:
        if self._refreshing:
            return
        self._refreshing = True
        try:
            self._sweeps = {s.sweep_id: s for s in query.experiment_sweeps(
                self.experiment, tracking_uri=self.tracking_uri)}
            sweep = self._sweeps.get(self.sweep_choice.value)
            # The run index answers from memory; a due full re-read runs in the background.
            table = query.runs_page(self.experiment, filter=self._filter(), metric=self._metric,
                                    ascending=self.ascending, top=self.top,
                                    tracker=self._tracker, tracking_uri=self.tracking_uri,
                                    missing_ok=True, background=True, on_change=self.refresh)
            trials = table.get("tags.nbtrack.trial")
            self._best = set(table["run_id"][trials == sweep.best_trial]) \
                if sweep is not None and sweep.best_trial and trials is not None else set()
            board = query.rank(table, metric=table.attrs.get("metric", self._metric),
                               ascending=self.ascending, top=self.top)
        except Exception as error:
            self._say(f"Could not read the runs: {display.short_error(error)}", error=True)
            return
        finally:
            self._refreshing = False
        self._versions = query.add_model_versions(board, self.tracking_uri) if len(board) else {}
        self._table = table
        self.runs = board
        self._metric = board.attrs.get("metric")
        self._refreshing = True
        try:
            metrics = sorted(c[len("metrics."):] for c in table.columns
                             if c.startswith("metrics."))
            self.metric_choice.options = metrics
            self.metric_choice.value = self._metric if self._metric in metrics else None
            chosen_sweep = self.sweep_choice.value
            self.sweep_choice.options = [("all runs", "")] + [
                (s.label, s.sweep_id) for s in self._sweeps.values()] + (
                [(chosen_sweep, chosen_sweep)] if chosen_sweep and
                chosen_sweep not in self._sweeps else [])
            self.sweep_choice.value = chosen_sweep
            selected = [r for r in self.selector.value if r in set(board["run_id"])]
            self.selector.options = [(self._label(row), row["run_id"])
                                     for _, row in board.iterrows()]
            self.selector.value = tuple(selected)
            params = plots.param_names(board)
            chosen = self.param_choice.value
            self.param_choice.options = params
            self.param_choice.value = chosen if chosen in params else plots.default_param(board)
        finally:
            self._refreshing = False
        self._draw()
        self._update_versions()

    def select(self, *run_ids: str) -> None:
        """Select runs by id, as clicking them in the list does."""
        known = {value for _, value in self.selector.options}
        unknown = [r for r in run_ids if r not in known]
        if unknown:
            self._say(f"Not on the board: {', '.join(unknown)} (refresh, or widen top/filter).",
                      error=True)
            return
        self.selector.value = tuple(run_ids)

    @property
    def selected(self) -> tuple[str, ...]:
        """Ids of the selected runs."""
        return tuple(self.selector.value)

    def register(self, model_name: str | None = None):
        """Register the selected run's logged model as a new version of ``model_name``.

        Returns the new ``ModelVersion``, or None (with a message) when no single run with a
        logged model is selected.
        """
        if len(self.selected) != 1:
            self._say("Select exactly one run to register its model.", error=True)
            return None
        run_id = self.selected[0]
        name = (model_name or self.model_name.value or self.experiment).strip()
        run_name = self._run_name(run_id)
        try:
            experiment_id = self._experiment_id(run_id)
            models = registry.logged_models(run_id, experiment_id, self.tracking_uri)
            if not models:
                self._say(f"Run '{run_name}' has no logged model: nothing was registered.",
                          error=True)
                return None
            version = registry.register(models[-1].model_uri, name, run_id=run_id,
                                        tracking_uri=self.tracking_uri)
        except Exception as error:
            self._say(f"Could not register run '{run_name}': {_reason(error)}", error=True)
            return None
        self.model_name.value = name
        self._say(f"Registered {name} v{version.version} from run '{run_name}'.")
        self.refresh()
        self.version_choice.value = (name, str(version.version))
        return version

    def request_alias_move(self) -> None:
        """What Set champion does: move at once, or ask first when another version holds it."""
        chosen = self.version_choice.value
        if chosen is None:
            self._say("Choose a registered version first (register a run's model).", error=True)
            return
        alias = self.alias.value.strip() or "champion"
        holder = registry.alias_holder(chosen[0], alias, self.tracking_uri)
        if holder is not None and str(holder.version) != chosen[1]:
            self.show_candidate()
            self.confirm_button.layout.display = None
            self._say(f"@{alias} is held by {chosen[0]} v{holder.version}. "
                      f"Confirm to move it to v{chosen[1]}.")
            return
        self.set_alias(alias)

    def set_alias(self, alias: str = "champion", version=None):
        """Move ``alias`` to ``version`` (default: the version chosen on the board).

        ``version`` is a version number of the board's model, or ``(model name, number)``.
        Calling this method is itself the confirmation: it moves the alias at once. Returns the
        ``ModelVersion`` now holding the alias, or None with a message.
        """
        self.confirm_button.layout.display = "none"
        if version is None:
            chosen = self.version_choice.value
        elif isinstance(version, tuple):
            chosen = (version[0], str(version[1]))
        else:
            chosen = ((self.model_name.value or self.experiment).strip(), str(version))
        if chosen is None:
            self._say("Choose a registered version first (register a run's model).", error=True)
            return None
        name, number = chosen
        alias = (alias or "champion").strip()
        try:
            previous = registry.set_alias(
                name, alias, number, moved_by=self._user(),
                notebook=self._notebook, tracking_uri=self.tracking_uri)
        except Exception as error:
            self._say(f"Could not move @{alias} of {name} to v{number}: {_reason(error)}",
                      error=True)
            return None
        was = f" (was v{previous.version})" if previous is not None else " (nothing held it)"
        self._say(f"@{alias} of {name} → v{number}{was}.")
        self.refresh()
        return registry.get_version(name, number, self.tracking_uri)

    def show_candidate(self) -> None:
        """Show the chosen version next to the alias's holder on the board's metric."""
        chosen = self.version_choice.value
        alias = self.alias.value.strip() or "champion"
        if chosen is None:
            self.candidate.value = ""
            return
        try:
            self.candidate.value = self._candidate_html(chosen, alias)
        except Exception as error:
            self.candidate.value = html.escape(f"(comparison unavailable: {error})")

    # -- drawing -----------------------------------------------------------------------------

    def _draw(self) -> None:
        self.table.value = render.html_table(self.runs, selected=self.selected,
                                             alias=self.alias.value.strip() or "champion",
                                             caption=self._caption(), best=self._best)
        self.plots.value = self._plots_html(self.selected)

    def _plots_html(self, selected=()) -> str:
        # String formatting and cached reads: safe on the writer thread that refreshes the board.
        return plots.board_plots(self.runs, self._metric, self.param_choice.value, selected,
                                 self._history, alias=self.alias.value.strip() or "champion")

    def _caption(self) -> str:
        sweep = self._sweeps.get(self.sweep_choice.value)
        filling = self._table is not None and self._table.attrs.get("filling")
        return render.caption(self.experiment, self._metric, self.ascending,
                              self.filter_box.value.strip(), self.sweep_choice.value, sweep,
                              self._table.attrs.get("indexed", 0) if filling else None)

    def _filter(self) -> str | None:
        """The filter box's expression, narrowed to the chosen sweep."""
        typed = self.filter_box.value.strip()
        if not self.sweep_choice.value:
            return typed or None
        return sweeps.trials_filter(self.sweep_choice.value) + (f" and {typed}" if typed else "")

    def _label(self, row) -> str:
        value = row.get(self._metric) if self._metric else None
        shown = f" · {self._metric}={render.format_value(value)}" if self._metric else ""
        best = " \u25c6" if row.get("run_id") in self._best else ""
        return f"{row['rank']}. {render.format_value(row['run'])}{shown}{best}"

    def _on_sweep(self, sweep_id) -> None:
        """Show one sweep's runs, ranked by its objective as its search was."""
        if self._refreshing:
            return
        # Known from the last refresh, or (a board opened on a sweep) read once.
        sweep = self._sweeps.get(sweep_id) or next(iter(query.experiment_sweeps(
            self.experiment, sweep_id, self.tracking_uri)), None) if sweep_id else None
        if sweep is not None and sweep.objective is not None:
            self._metric = sweep.objective
            self._refreshing = True  # one refresh below, not one for the toggle too
            try:
                self.ascending_toggle.value = sweep.minimize
            finally:
                self._refreshing = False
        self.refresh()

    def _on_metric(self, metric) -> None:
        if self._refreshing or metric is None or metric == self._metric:
            return
        self._metric = metric
        self.refresh()

    def _on_selection(self, run_ids) -> None:
        if self._refreshing:
            return
        self._draw()
        self._update_versions()
        self.comparison.value = self._comparison_html(list(run_ids)) if len(run_ids) > 1 else ""

    def _update_versions(self) -> None:
        runs = self.selected or ()
        options = []
        for run_id in runs:
            for version in sorted(self._versions.get(run_id, []),
                                  key=lambda v: (v.name, int(v.version))):
                aliases = "".join(f" @{a}" for a in sorted(version.aliases or []))
                options.append((f"{version.name} v{version.version}{aliases}",
                                (version.name, str(version.version))))
        current = self.version_choice.value
        self.version_choice.options = options
        if current in [value for _, value in options]:
            self.version_choice.value = current
        elif options:
            self.version_choice.value = options[-1][1]
        self.show_candidate()

    def _say(self, text: str, error: bool = False) -> None:
        color = "#b00020" if error else "#1b5e20"
        self.message.value = f'<span style="color:{color}">{html.escape(text)}</span>'

    def _candidate_html(self, chosen, alias: str) -> str:
        name, number = chosen
        candidate = registry.get_version(name, number, self.tracking_uri)
        holder = registry.alias_holder(name, alias, self.tracking_uri)
        metric = self._metric
        parts = [self._version_summary("candidate", candidate, metric)]
        if holder is None:
            parts.append(f"nothing holds @{html.escape(alias)} yet")
        elif str(holder.version) == str(number):
            parts.append(f"this version already holds @{html.escape(alias)}")
        else:
            parts.append(self._version_summary(f"current @{alias}", holder, metric))
            differs = query.data_differs(candidate.run_id, holder.run_id, self.tracking_uri)
            if differs:
                parts.append(f"<b>⚠ evaluated on different data</b>: {html.escape(differs)}")
        return "<br>".join(parts)

    def _version_summary(self, role, version, metric) -> str:
        run = query.get_run(version.run_id, self.tracking_uri) if version.run_id else None
        run_name = run.data.tags.get("mlflow.runName", version.run_id) if run else "?"
        value = run.data.metrics.get(metric) if (run and metric) else None
        shown = f"{metric} = {render.format_value(value)}" if metric else ""
        return html.escape(f"{role}: {version.name} v{version.version} (run '{run_name}') {shown}")

    def _comparison_html(self, run_ids: list[str]) -> str:
        runs = [query.get_run(run_id, self.tracking_uri) for run_id in run_ids]
        rows = [{"name": r.data.tags.get("mlflow.runName", r.info.run_id),
                 "params": r.data.params, "metrics": r.data.metrics} for r in runs]
        parts = [render.compare_table(rows)]
        if len(run_ids) == 2:  # what `nbtrack diff` says about the pair, the same way
            from nbtrack import diff

            facts = [query.run_facts(run_id, self.tracking_uri) for run_id in run_ids]
            parts.append(render.diff_html(diff.compare(*facts)))
        for run in runs:
            for path, png in query.figure_images(run.info.run_id, self.tracking_uri):
                parts.append(render.png_figure(png, f"{run.data.tags.get('mlflow.runName', '')}: {path}"))
        return "".join(parts)

    def _run_name(self, run_id: str) -> str:
        return _shown(self.runs, run_id, "run") or run_id

    def _experiment_id(self, run_id: str) -> str:
        return (_shown(self._table, run_id, "experiment_id")
                or query.get_run(run_id, self.tracking_uri).info.experiment_id)

    # -- display -----------------------------------------------------------------------------

    def static_html(self) -> str:
        """The board as static HTML, its table and pictures (what nbconvert and code hosts show)."""
        if self.runs is None:
            return "<p>nbtrack leaderboard: no runs read yet</p>"
        return render.html_table(self.runs, alias=self.alias.value.strip() or "champion",
                                 caption=self._caption(), best=self._best
                                 ) + self._plots_html(self.selected)

    def _repr_html_(self) -> str:
        return self.static_html()

    def static_text(self) -> str:
        """The board as plain text (what terminals show)."""
        if self.runs is None:
            return "nbtrack leaderboard: no runs read yet"
        return render.text_table(self.runs, caption=self._caption())

    def _repr_mimebundle_(self, **kwargs):
        # Widget state is not saved by headless execution: the static views travel in the same
        # bundle, and frontends without a widget manager show them instead of an empty widget.
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = self.static_html()
        bundle["text/plain"] = self.static_text()
        return bundle


def _shown(table, run_id: str, column: str) -> str | None:
    """A run's value in a column of a table the board read, if it is there."""
    match = table[table["run_id"] == run_id] if table is not None and column in table else []
    return str(match[column].iloc[0]) if len(match) else None


def _reason(error: BaseException) -> str:
    """Why an action failed, in one line: nbtrack's own errors already say it in words."""
    if isinstance(error, NbtrackError):
        return str(error)
    return display.short_error(error)
