"""Every message nbtrack shows the user goes through here.

A summary is one line on stdout after a tracked cell; a warning is one line on stderr. Both start
with ``nbtrack:`` so they are told apart from the cell's own output.
"""

from __future__ import annotations

import sys

from nbtrack.record import FINISHED, HIDDEN_STATE_TAG, CellRecord, RunOutcome

PREFIX = "nbtrack:"


def warn(message: str) -> None:
    """Show one warning line about something nbtrack could not do."""
    line = " ".join(str(message).split())  # one line, whatever the message held
    print(f"{PREFIX} {line}", file=sys.stderr, flush=True)


def info(message: str) -> None:
    """Show one informational line."""
    print(f"{PREFIX} {message}", flush=True)


def short_error(error: BaseException) -> str:
    """``TypeName: message`` on one line, cut to a readable length."""
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _model(model) -> str:
    """``clf``, or ``booster (xgboost)``: a model's name, and its flavor when not scikit-learn's."""
    if model.note:
        return f"{model.name} ({model.note})"
    return model.name if model.flavor == "sklearn" else f"{model.name} ({model.flavor})"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def summary_line(record: CellRecord, outcome: RunOutcome | None,
                 queued_because: str | None = None) -> str:
    """Return the line shown after a tracked cell, e.g.

    ``nbtrack: run 'logreg' · 4 params, 2 metrics, 1 figure, model clf · experiment 'demo'``.

    ``outcome`` is None while the run is on its way to the store (the usual case: the background
    writer has it); ``queued_because`` then says why the store is not taking runs right now.
    """
    counts = record.summary_counts()
    parts = [
        _plural(counts["params"], "param"),
        _plural(counts["metrics"], "metric"),
        _plural(counts["figures"], "figure"),
    ]
    if outcome is None:
        if record.models:
            parts.append("model " + ", ".join(map(_model, record.models)))
    else:
        if outcome.model_uris:
            parts.append("model " + ", ".join(_model(m) for m in record.models
                                              if m.name in outcome.model_uris))
        missing = [m.name for m in record.models if m.name not in outcome.model_uris]
        if missing and outcome.run_id is not None:
            parts.append("model " + ", ".join(missing) + " NOT logged")
    if counts["datasets"]:
        parts.append(_plural(counts["datasets"], "dataset"))
    status = "" if record.status == FINISHED else f" {record.status}"
    where = f"experiment '{record.experiment}'"
    if outcome is None:
        head = f"run '{record.run_name}'{status}"
    elif outcome.run_id is None or outcome.retry:
        head = f"run '{record.run_name}'{status} queued"
    else:
        head = f"run '{record.run_name}'{status} ({outcome.run_id[:8]})"
    line = f"{PREFIX} {head} · {', '.join(parts)} · {where}"
    hidden = record.tags.get(HIDDEN_STATE_TAG)
    if hidden:  # the saved notebook would not rebuild this run: say so where it is seen
        line += " · hidden state: " + (hidden if len(hidden) <= 300 else hidden[:300] + "...")
    if outcome is not None and outcome.registered:
        line += f" · registered {outcome.registered}"
    if queued_because:
        line += " · queued: the store is not answering, the run waits in the journal"
    return line


def show_summary(record: CellRecord, outcome: RunOutcome | None,
                 queued_because: str | None = None) -> None:
    """Print the summary line for a tracked cell."""
    print(summary_line(record, outcome, queued_because), flush=True)
