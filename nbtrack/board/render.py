"""Static renderings of a leaderboard: HTML (every value escaped) and plain text.

The live widget and the static views share :func:`html_table`, so what nbconvert saves and what the
panel shows rank the same runs the same way.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

FIXED_COLUMNS = ("rank", "run", "notebook", "start_time", "status")
STYLE = """<style>
.nbtrack-t{border-collapse:collapse;font:12px/1.4 system-ui,sans-serif}
.nbtrack-t th,.nbtrack-t td{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left}
.nbtrack-t th{background:#f4f4f4}
.nbtrack-t tr.nbtrack-champion td{background:#fff6d5;font-weight:600}
.nbtrack-t td.nbtrack-diff{background:#ffe3e3}
.nbtrack-t tr.nbtrack-selected td{outline:1px solid #2b7bb9}
.nbtrack-t tr.nbtrack-best td{background:#e3f4e1}
</style>"""


def format_value(value: Any) -> str:
    """A cell's text: floats to 4 significant places, missing values empty, lists joined."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    if hasattr(value, "strftime"):
        try:
            return value.strftime("%Y-%m-%d %H:%M")
        except ValueError:  # NaT
            return ""
    return str(value)


def _columns(board) -> list[str]:
    hidden = {"run_id"}
    return [c for c in board.columns if c not in hidden]


def _notebook_name(path: Any) -> str:
    text = format_value(path)
    return text.rsplit("/", 1)[-1]


def is_champion(models: Any, alias: str = "champion") -> bool:
    """True when one of a run's model versions holds ``alias``."""
    return any(f"@{alias}" in str(m).split() for m in (models or []))


def html_table(board, selected=(), alias: str = "champion", caption: str = "", best=()) -> str:
    """Render a ranked board as an HTML table; champion rows, selected rows and the runs of a
    search's best trial (``best``, run ids) are marked.
    """
    columns = _columns(board)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    rows = []
    selected, best = set(selected), set(best)
    for _, row in board.iterrows():
        classes = []
        if "models" in board.columns and is_champion(row.get("models"), alias):
            classes.append("nbtrack-champion")
        if row.get("run_id") in selected:
            classes.append("nbtrack-selected")
        if row.get("run_id") in best:
            classes.append("nbtrack-best")
        cells = []
        for column in columns:
            value = row[column]
            text = _notebook_name(value) if column == "notebook" else format_value(value)
            if column == "run" and "nbtrack-champion" in classes:
                text = f"\u2605 {text}"
            if column == "run" and "nbtrack-best" in classes:
                text = f"\u25c6 {text}"
            cells.append(f"<td>{html.escape(text)}</td>")
        class_attr = f' class="{" ".join(classes)}"' if classes else ""
        rows.append(f"<tr{class_attr}>{''.join(cells)}</tr>")
    caption_html = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    if not rows:
        rows.append(f'<tr><td colspan="{len(columns)}">no runs yet</td></tr>')
    return (f'{STYLE}<table class="nbtrack-t">{caption_html}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


MAX_TEXT_PARAMS = 8


def text_table(board, caption: str = "") -> str:
    """Render a ranked board as aligned plain text (terminals, text/plain).

    At most :data:`MAX_TEXT_PARAMS` param columns are shown; a last line says how many more.
    """
    columns = _columns(board)
    params = [c for c in columns if c.startswith("params.")]
    hidden = params[MAX_TEXT_PARAMS:]
    columns = [c for c in columns if c not in hidden]
    rows = [[str(c) for c in columns]]
    for _, row in board.iterrows():
        rows.append([
            _notebook_name(row[c]) if c == "notebook" else format_value(row[c]) for c in columns
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    if len(rows) == 1:
        lines.append("(no runs yet)")
    if hidden:
        lines.append(f"(+{len(hidden)} more differing params: see --format csv or the board)")
    return "\n".join(([caption] if caption else []) + lines)


def compare_table(runs: list[dict], alias: str = "champion") -> str:
    """Params and metrics of several runs side by side; rows whose values differ are marked.

    ``runs`` holds dicts with ``name``, ``params`` and ``metrics``.
    """
    names = [run["name"] for run in runs]
    head = "<th>key</th>" + "".join(f"<th>{html.escape(str(n))}</th>" for n in names)
    body = []
    for section in ("metrics", "params"):
        keys = sorted({k for run in runs for k in run[section]})
        for key in keys:
            values = [run[section].get(key) for run in runs]
            texts = [format_value(v) for v in values]
            differ = len(set(texts)) > 1
            cls = ' class="nbtrack-diff"' if differ else ""
            cells = "".join(f"<td{cls}>{html.escape(t)}</td>" for t in texts)
            body.append(f"<tr><td>{html.escape(section[:-1])} {html.escape(key)}</td>{cells}</tr>")
    return (f'{STYLE}<table class="nbtrack-t nbtrack-compare"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def diff_html(run_diff) -> str:
    """What differs between two runs (a :class:`nbtrack.diff.RunDiff`) as HTML: the same
    sections ``nbtrack diff`` prints, the cell source as a unified diff.
    """
    from nbtrack.diff import format_value

    title = (f"<p><b>What differs</b> between a: {html.escape(run_diff.a)} and "
             f"b: {html.escape(run_diff.b)}</p>")
    if run_diff.same:
        return title + "<p>No differences: same params, metrics, source, data, packages and commit.</p>"
    rows = []
    for section, changes in run_diff.sections:
        for change in changes:
            rows.append(f"<tr><td>{html.escape(section)}</td><td>{html.escape(change.key)}</td>"
                        f"<td>{html.escape(format_value(change.a))}</td>"
                        f"<td>{html.escape(format_value(change.b))}</td></tr>")
    parts = [title]
    if rows:
        parts.append(f'{STYLE}<table class="nbtrack-t nbtrack-rundiff"><thead><tr><th>what</th>'
                     f"<th>key</th><th>a</th><th>b</th></tr></thead><tbody>{''.join(rows)}"
                     "</tbody></table>")
    if run_diff.source:
        parts.append('<pre class="nbtrack-source-diff">' + html.escape(run_diff.source) + "</pre>")
    return "".join(parts)


def png_figure(png: bytes, label: str) -> str:
    """A PNG picture with its label, inline (data URI), as a figure."""
    data = base64.b64encode(png).decode()
    return (f'<figure style="display:inline-block;margin:4px"><img src="data:image/png;base64,'
            f'{data}" style="max-width:360px"><figcaption>{html.escape(label)}</figcaption>'
            f"</figure>")


def caption(experiment: str, metric: str | None, ascending: bool, typed_filter: str,
            sweep_id: str, sweep, read_so_far: int | None) -> str:
    """The board's caption: what it ranks, how, what it is narrowed to (a filter, a sweep and
    its best trial, given as a ``store.sweeps.Sweep`` when known), and, while a first read of
    the runs goes on (``read_so_far`` of them), that the ranking is of those.
    """
    order = "lowest first" if ascending else "highest first"
    by = f", ranked by {metric} ({order})" if metric else ""
    where = f", filter: {typed_filter}" if typed_filter else ""
    if sweep_id:
        where += f", sweep {sweep.label if sweep else sweep_id}"
    if sweep is not None and sweep.best_trial:
        where += f", \u25c6 its best trial ({sweep.best_trial})"
    if read_so_far is not None:
        where += f"; reading the runs: ranked among the first {read_so_far:,} read"
    return f"experiment '{experiment}'{by}{where}"
