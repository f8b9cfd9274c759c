"""The board's pictures: the ranked metric against a param (the champion marked), the runs in
parallel coordinates (numeric params and the metric), and the curves of the selected runs.

Each picture is an SVG written by string formatting, never with matplotlib: the board redraws on
whatever thread refreshes it (the kernel's writer thread after each tracked cell), and string
formatting is safe there. Pictures are shown as ``<img src="data:image/svg+xml;base64,...">``:
JupyterLab's sanitizer drops inline ``<svg>`` from HTML outputs but keeps data-URI images (as
nbconvert does for SVG outputs), and an SVG loaded as an image runs no script. Every user string
(run names, param names and values, metric names) is escaped inside the SVG and in ``alt``.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence

from nbtrack.board.render import format_value, is_champion
from nbtrack.record import SYSTEM_PREFIX

# (run_id, key, finished) -> [(step, value), ...]
History = Callable[[str, str, bool], list[tuple[float, float]]]

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f")
CHAMPION_COLOR = "#d4a017"
SELECTED_COLOR = "#2b7bb9"
NOT_METRICS = frozenset({"rank", "run", "status", "start_time", "notebook", "user", "run_id",
                         "models"})
ENDED = frozenset({"FINISHED", "FAILED", "KILLED"})
MAX_PARALLEL_PARAMS = 8
MAX_CURVE_KEYS = 4  # panels in the curves picture
MAX_KEYS_READ = 8  # metric keys whose series are read per run, looking for curves
DEFAULT_CURVE_RUNS = 3  # runs whose curves show while none is selected
LABEL_CHARS = 18


class HistoryCache:
    """Metric series read from the store once per (run, key), kept for the board's lifetime.

    A running run's series still grow: they are read again each time.
    """

    def __init__(self, tracking_uri=None):
        self.tracking_uri = tracking_uri
        self.reads = 0  # how many series were read from the store
        self._kept: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def __call__(self, run_id: str, key: str, finished: bool = True):
        """``(step, value)`` points of ``key`` in ``run_id``; ``finished`` keeps them."""
        kept = self._kept.get((run_id, key))
        if kept is not None:
            return kept
        from nbtrack.store import query

        points = query.metric_history(run_id, key, self.tracking_uri)
        self.reads += 1
        if finished:
            self._kept[(run_id, key)] = points
        return points


# -- what the board holds ------------------------------------------------------------------------


def param_names(board) -> list[str]:
    """The params shown on the board (those whose values differ between its runs)."""
    return [c[len("params."):] for c in board.columns if str(c).startswith("params.")]


def metric_names(board) -> list[str]:
    """The metric columns of a ranked board, system metrics left out."""
    return [c for c in board.columns if c not in NOT_METRICS and not str(c).startswith("params.")
            and not str(c).startswith(SYSTEM_PREFIX)]


def _number(value) -> float | None:
    """A finite float from a metric or a param's text, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def is_numeric(board, param: str) -> bool:
    """True when every value the runs have for ``param`` reads as a number."""
    values = [v for v in board[f"params.{param}"] if not _missing(v)]
    return bool(values) and all(_number(v) is not None for v in values)


def default_param(board) -> str | None:
    """The param the scatter plots against first: the first numeric one, else the first."""
    names = param_names(board)
    return next((p for p in names if is_numeric(board, p)), names[0] if names else None)


def _champion_flags(board, alias: str) -> list[bool]:
    if "models" not in board.columns:
        return [False] * len(board)
    return [is_champion(models, alias) for models in board["models"]]


# -- drawing helpers -----------------------------------------------------------------------------


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _short(text, limit: int = LABEL_CHARS) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class _Scale:
    """Maps values onto [start, end]; logarithmic for positive values spanning 100x or more."""

    def __init__(self, values: Sequence[float], start: float, end: float, log_ok: bool = True):
        low, high = min(values), max(values)
        self.log = log_ok and low > 0 and high / low >= 100
        if self.log:
            low, high = math.log10(low), math.log10(high)
        if high == low:
            low, high = low - 0.5, high + 0.5
        self.low, self.high, self.start, self.end = low, high, start, end
        self.lowest, self.highest = min(values), max(values)

    def __call__(self, value: float) -> float:
        value = math.log10(value) if self.log else value
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)


def _svg(width: int, height: int, kind: str, body: Sequence[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10" '
            f'class="nbtrack-{kind}"><rect width="{width}" height="{height}" fill="white" '
            f'stroke="#ddd"/>{"".join(body)}</svg>')


def _message(kind: str, title: str, text: str, width: int = 360, height: int = 80) -> str:
    return _svg(width, height, kind, [
        f'<text x="8" y="16" font-size="12" font-weight="bold">{_e(title)}</text>',
        f'<text x="8" y="40" fill="#666" class="nbtrack-empty">{_e(text)}</text>'])


def figure(svg: str, alt: str, kind: str) -> str:
    """One picture as an ``<img>`` with an SVG data URI, its ``alt`` text as the caption."""
    data = base64.b64encode(svg.encode()).decode()
    return (f'<figure class="nbtrack-figure" style="display:inline-block;margin:4px">'
            f'<img class="nbtrack-plot nbtrack-plot-{kind}" alt="{_e(alt)}" '
            f'src="data:image/svg+xml;base64,{data}">'
            f'<figcaption style="font:11px sans-serif;color:#555;max-width:420px">{_e(alt)}'
            f"</figcaption></figure>")


# -- the three pictures --------------------------------------------------------------------------


def scatter(board, metric: str | None, param: str | None, alias: str = "champion",
            selected: Sequence[str] = ()) -> tuple[str, str]:
    """The ranked metric (y) against ``param`` (x), one point a run; returns ``(svg, alt)``.

    The run whose model version holds ``alias`` is ringed in gold and labelled; selected runs are
    outlined. A param whose values are not all numbers is placed by category.
    """
    title = f"{metric} by {param}" if metric and param else "metric by param"
    if not metric or metric.startswith(SYSTEM_PREFIX) or metric not in board.columns:
        return _message("scatter", title, "no model metric ranks this board"), title
    if not param or f"params.{param}" not in board.columns:
        return _message("scatter", title, "no param differs between these runs"), title
    numeric = is_numeric(board, param)
    column = board[f"params.{param}"]
    categories = sorted({str(v) for v in column if not _missing(v)})
    champions = _champion_flags(board, alias)
    points = []
    for (_, row), raw, champion in zip(board.iterrows(), column, champions, strict=True):
        y = _number(row[metric])
        x = _number(raw) if numeric else (None if _missing(raw) else categories.index(str(raw)))
        if x is not None and y is not None:
            points.append((x, y, row, champion))
    if not points:
        return _message("scatter", title, f"no run has both {param} and {metric}"), title
    width, height, left, top, bottom, right = 380, 260, 52, 24, 40, 14
    xs = _Scale([p[0] for p in points], left + 10, width - right - 10)
    ys = _Scale([p[1] for p in points], height - bottom - 8, top + 8)
    body = [f'<text x="8" y="15" font-size="12" font-weight="bold">{_e(title)}</text>',
            f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" '
            f'y2="{height - bottom}" stroke="#999"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
            f'<text x="{left - 4}" y="{ys(ys.highest) + 3:.1f}" text-anchor="end" fill="#666">'
            f"{_fmt(ys.highest)}</text>",
            f'<text x="{left - 4}" y="{ys(ys.lowest) + 3:.1f}" text-anchor="end" fill="#666">'
            f"{_fmt(ys.lowest)}</text>",
            f'<text x="{(left + width - right) / 2:.0f}" y="{height - 6}" text-anchor="middle">'
            f'{_e(param)}{" (log)" if xs.log else ""}</text>',
            f'<text x="12" y="{(top + height - bottom) / 2:.0f}" text-anchor="middle" '
            f'transform="rotate(-90 12 {(top + height - bottom) / 2:.0f})">'
            f'{_e(metric)}{" (log)" if ys.log else ""}</text>']
    if numeric:
        ticks = sorted({xs.lowest, xs.highest})
        labels = [(t, _fmt(t)) for t in ticks]
    else:
        labels = [(i, _short(c, 12)) for i, c in enumerate(categories)]
    for x, label in labels:
        body.append(f'<text x="{xs(x):.1f}" y="{height - bottom + 12}" text-anchor="middle" '
                    f'fill="#666">{_e(label)}</text>')
    chosen = set(selected)
    crowned = []
    for x, y, row, champion in points:
        cx, cy = xs(x), ys(y)
        name = format_value(row["run"]) or str(row.get("run_id", ""))
        stroke = (f' stroke="{SELECTED_COLOR}" stroke-width="2"'
                  if row.get("run_id") in chosen else "")
        tip = f"{name}: {param}={format_value(row[f'params.{param}'])}, {metric}={_fmt(y)}"
        body.append(f'<circle class="nbtrack-point" cx="{cx:.1f}" cy="{cy:.1f}" r="4" '
                    f'fill="{COLORS[0]}" fill-opacity="0.75"{stroke}><title>{_e(tip)}</title>'
                    f"</circle>")
        if champion:
            crowned.append((cx, cy, name))
    for cx, cy, name in crowned:
        anchor = "end" if cx > width / 2 else "start"
        dx = -10 if anchor == "end" else 10
        body.append(f'<g class="nbtrack-champion"><circle cx="{cx:.1f}" cy="{cy:.1f}" r="8" '
                    f'fill="none" stroke="{CHAMPION_COLOR}" stroke-width="2.5"/>'
                    f'<text x="{cx + dx:.1f}" y="{cy - 8:.1f}" text-anchor="{anchor}" '
                    f'fill="#8a6d00" font-weight="bold">★ @{_e(alias)}: {_e(_short(name))}'
                    f"</text></g>")
    alt = f"{metric} against {param} for {len(points)} runs"
    if crowned:
        alt += "; @" + alias + ": " + ", ".join(name for _, _, name in crowned)
    return _svg(width, height, "scatter", body), alt


def parallel(board, metric: str | None, alias: str = "champion") -> tuple[str, str]:
    """Parallel coordinates: an axis per numeric param and the metric last, a line per run
    (darker for better ranks, the champion's in gold); returns ``(svg, alt)``.
    """
    title = "params and " + (metric or "metric")
    if not metric or metric.startswith(SYSTEM_PREFIX) or metric not in board.columns:
        return _message("parallel", title, "no model metric ranks this board"), title
    axes = [p for p in param_names(board) if is_numeric(board, p)][:MAX_PARALLEL_PARAMS]
    if not axes:
        return _message("parallel", title, "no numeric param differs between these runs"), title
    columns = [f"params.{p}" for p in axes] + [metric]
    width, height, top, bottom = max(300, 110 * len(columns)), 260, 50, 30
    step = (width - 60) / max(1, len(columns) - 1)
    positions = [30 + i * step for i in range(len(columns))]
    scales = []
    for column in columns:
        values = [v for v in (_number(x) for x in board[column]) if v is not None]
        scales.append(_Scale(values, height - bottom, top) if values else None)
    body = [f'<text x="8" y="15" font-size="12" font-weight="bold">{_e(title)}</text>']
    for x, name, scale in zip(positions, axes + [metric], scales, strict=True):
        body.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" '
                    f'stroke="#999"/><text x="{x:.1f}" y="{top - 16}" text-anchor="middle" '
                    f'font-weight="bold">{_e(_short(name, 16))}{" (log)" if scale and scale.log else ""}'
                    f"</text>")
        if scale is not None:
            body.append(f'<text x="{x + 3:.1f}" y="{top + 3}" fill="#666">{_fmt(scale.highest)}'
                        f'</text><text x="{x + 3:.1f}" y="{height - bottom + 12}" fill="#666">'
                        f"{_fmt(scale.lowest)}</text>")
    champions = _champion_flags(board, alias)
    lines, crowned = [], []
    count = max(1, len(board) - 1)
    for index, ((_, row), champion) in enumerate(zip(board.iterrows(), champions, strict=True)):
        placed = []
        for x, column, scale in zip(positions, columns, scales, strict=True):
            value = _number(row[column])
            placed.append(None if value is None or scale is None else (x, scale(value)))
        segments, current = [], []
        for point in placed + [None]:
            if point is None:
                if len(current) > 1:
                    segments.append(current)
                current = []
            else:
                current.append(point)
        if not segments:
            continue
        name = format_value(row["run"]) or str(row.get("run_id", ""))
        shade = 0.25 + 0.45 * index / count  # rank 1 darkest
        color = CHAMPION_COLOR if champion else f"hsl(210,70%,{shade * 100:.0f}%)"
        drawn = "".join(
            f'<polyline fill="none" stroke="{color}" stroke-width="{3 if champion else 1.5}" '
            f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in segment)}"/>'
            for segment in segments)
        cls = "nbtrack-line nbtrack-champion" if champion else "nbtrack-line"
        line = f'<g class="{cls}"><title>{_e(name)}</title>{drawn}</g>'
        (crowned if champion else lines).append(line)
    body += list(reversed(lines)) + crowned  # the best ranks and the champion on top
    alt = f"{len(lines) + len(crowned)} runs across {', '.join(axes)} and {metric}"
    return _svg(int(width), height, "parallel", body), alt


def curve_runs(board, selected: Sequence[str]) -> tuple[list[str], bool]:
    """The runs whose curves show: the selected ones on the board, else the top ranked few.
    Returns ``(run_ids, chosen)``, ``chosen`` False for the default.
    """
    shown = [r for r in board["run_id"] if r in set(selected)]
    if shown:
        return shown, True
    return list(board["run_id"][:DEFAULT_CURVE_RUNS]), False


def curve_series(board, metric: str | None, run_ids: Sequence[str], history: History):
    """The series to draw: ``{key: {run_id: [(step, value), ...]}}`` for metric keys (the ranked
    one first) that have more than one point in some of ``run_ids``; system metrics left out.
    """
    rows = {row["run_id"]: row for _, row in board.iterrows() if row["run_id"] in set(run_ids)}
    keys = metric_names(board)
    if metric in keys:
        keys = [metric] + [k for k in keys if k != metric]
    found: dict[str, dict[str, list]] = {}
    for key in keys[:MAX_KEYS_READ]:
        by_run = {}
        for run_id in run_ids:
            row = rows.get(run_id)
            if row is None or _missing(row[key]):
                continue
            points = history(run_id, key, str(row.get("status")) in ENDED)
            points = [(s, v) for s, v in points if _number(v) is not None]
            if points:
                by_run[run_id] = points
        if any(len(p) > 1 for p in by_run.values()):
            found[key] = by_run
        if len(found) == MAX_CURVE_KEYS:
            break
    return found


def curves(series, names: dict[str, str], title: str) -> tuple[str, str]:
    """Each key's series of every run overlaid, a panel per key, one colour per run in every
    panel and a legend below; returns ``(svg, alt)``.
    """
    if not series:
        return _message("curves", title, "no metric was logged over steps by these runs "
                                         "(log_metric(key, value, step=...) makes a series)",
                        width=420), title
    run_ids = list(dict.fromkeys(r for by_run in series.values() for r in by_run))
    colors = {r: COLORS[i % len(COLORS)] for i, r in enumerate(run_ids)}
    panel_w, panel_h, columns = 260, 170, min(2, len(series))
    rows = -(-len(series) // columns)
    legend_h = 14 * len(run_ids) + 6
    width = max(420, columns * (panel_w + 8) + 8)
    height = 24 + rows * (panel_h + 8) + legend_h
    body = [f'<text x="8" y="15" font-size="12" font-weight="bold">{_e(title)}</text>']
    for index, (key, by_run) in enumerate(series.items()):
        ox = 8 + (index % columns) * (panel_w + 8)
        oy = 24 + (index // columns) * (panel_h + 8)
        every = [p for points in by_run.values() for p in points]
        xs = _Scale([p[0] for p in every], ox + 40, ox + panel_w - 8, log_ok=False)
        ys = _Scale([p[1] for p in every], oy + panel_h - 18, oy + 18)
        body.append(f'<g class="nbtrack-curve-panel"><rect x="{ox}" y="{oy}" width="{panel_w}" '
                    f'height="{panel_h}" fill="none" stroke="#eee"/>'
                    f'<text x="{ox + 4}" y="{oy + 12}" font-weight="bold">{_e(key)}'
                    f'{" (log)" if ys.log else ""}</text>'
                    f'<text x="{ox + 36}" y="{oy + 22}" text-anchor="end" fill="#666">'
                    f'{_fmt(ys.highest)}</text><text x="{ox + 36}" y="{oy + panel_h - 16}" '
                    f'text-anchor="end" fill="#666">{_fmt(ys.lowest)}</text>'
                    f'<text x="{ox + 40}" y="{oy + panel_h - 4}" fill="#666">step '
                    f"{_fmt(xs.lowest)}–{_fmt(xs.highest)}"
                    f"</text>")
        for run_id, points in by_run.items():
            name = _e(names.get(run_id, run_id))
            placed = [(xs(s), ys(v)) for s, v in points]
            if len(placed) == 1:
                x, y = placed[0]
                body.append(f'<circle class="nbtrack-curve" cx="{x:.1f}" cy="{y:.1f}" r="2.5" '
                            f'fill="{colors[run_id]}"><title>{name}</title></circle>')
            else:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in placed)
                body.append(f'<polyline class="nbtrack-curve" fill="none" '
                            f'stroke="{colors[run_id]}" stroke-width="1.5" points="{path}">'
                            f"<title>{name}</title></polyline>")
        body.append("</g>")
    legend_y = 24 + rows * (panel_h + 8)
    for index, run_id in enumerate(run_ids):
        y = legend_y + 10 + 14 * index
        body.append(f'<g class="nbtrack-legend"><rect x="10" y="{y - 8}" width="10" height="3" '
                    f'fill="{colors[run_id]}"/><text x="26" y="{y}">'
                    f"{_e(names.get(run_id, run_id))}</text></g>")
    alt = f"{title}: {', '.join(series)} of {', '.join(names.get(r, r) for r in run_ids)}"
    return _svg(width, height, "curves", body), alt


def board_plots(board, metric: str | None, param: str | None = None, selected=(),
                history: History | None = None, alias: str = "champion",
                interactive: bool = True) -> str:
    """The three pictures of a ranked board as HTML (``""`` for a board without runs).

    Parameters
    ----------
    board
        A ranked board (:func:`nbtrack.store.query.rank`), with its ``models`` column to mark
        the run whose version holds ``alias``.
    metric
        The metric the board ranks by.
    param
        The param the scatter plots the metric against; default: :func:`default_param`.
    selected
        Ids of the selected runs: outlined on the scatter, drawn as curves.
    history
        Reads a run's series, e.g. a :class:`HistoryCache`; without it no curves are drawn.
    alias
        The registry alias whose run the pictures mark (default ``champion``).
    interactive
        Shown where runs can be selected (the widget), which the curves' title says.

    Examples
    --------
    >>> board_plots(nbtrack.leaderboard(), "val_auc", history=HistoryCache())  # doctest: +SKIP

    """
    if board is None or not len(board):
        return ""
    if param is None or f"params.{param}" not in board.columns:
        param = default_param(board)
    names = {row["run_id"]: format_value(row["run"]) or row["run_id"]
             for _, row in board.iterrows()}
    run_ids, chosen = curve_runs(board, selected)
    title = "curves of the selected runs" if chosen else (
        f"curves of the top {len(run_ids)} runs"
        + (" (select runs to choose)" if interactive else ""))
    series = curve_series(board, metric, run_ids, history) if history is not None else {}
    parts = [figure(*scatter(board, metric, param, alias, selected), "scatter"),
             figure(*parallel(board, metric, alias), "parallel"),
             figure(*curves(series, names, title), "curves")]
    return ('<div class="nbtrack-plots" style="display:flex;flex-wrap:wrap;'
            f'align-items:flex-start">{"".join(parts)}</div>')


def page(board, caption: str, param: str | None = None) -> str:
    """A standalone HTML page of a ranked board: its table and pictures (``nbtrack runs --html``).

    NbtrackError when ``param`` is not one of the board's params.
    """
    from nbtrack.board.render import html_table
    from nbtrack.errors import NbtrackError

    if param and param not in param_names(board):
        raise NbtrackError(f"no param {param!r} differs between the listed runs; params here: "
                           f"{', '.join(param_names(board)) or 'none'}.")
    body = html_table(board, caption=caption) + board_plots(
        board, board.attrs.get("metric"), param, history=HistoryCache(), interactive=False)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>nbtrack: {_e(caption)}</title></head>"
            f'<body style="font:13px system-ui,sans-serif">{body}</body></html>\n')
