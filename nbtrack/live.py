"""The live panel: the series a running tracked cell logs, drawn under it as it runs.

The panel is an SVG picture (one small chart per quantity, train and validation of the same
quantity together, the elapsed time and the latest values), published as a display and updated
in place (``update_display_data``): JupyterLab, Notebook 7, VS Code and nbconvert all keep the
last picture, so an executed notebook shows the final curves on GitHub too. It is drawn by
string formatting on the thread that calls ``log_metric`` (the cell's), at most a few times a
second, never with matplotlib and never on a thread of nbtrack's. Plain Python: the IPython layer
hands in the function that publishes a display.
"""

from __future__ import annotations

import html
import itertools
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nbtrack.record import SYSTEM_PREFIX, Series

INTERVAL_SECONDS = 0.25  # at most four redraws a second
MAX_POINTS = 240  # per line: a chart is 260 pixels wide
CHART_WIDTH, CHART_HEIGHT, COLUMNS = 260, 150, 3
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
# Output metadata that marks what nbtrack adds to a cell's outputs.
METADATA = {"nbtrack": {"output": "live-panel"}}

# train_loss / val_loss, train-auc / val-auc, loss / eval_loss: one quantity, several data sets.
_SPLIT = re.compile(r"^(?P<split>train(?:ing)?|val(?:id(?:ation)?)?|eval|test)(?:_\d+)?[-_/.]"
                    r"(?P<quantity>.+)$")

Publish = Callable[[Mapping[str, Any], Mapping[str, Any], str, bool], None]


def quantity(key: str) -> str:
    """The quantity a series measures, without the data set it was measured on.

    >>> [quantity(k) for k in ("train_loss", "val_loss", "loss", "val-auc", "eval_loss")]
    ['loss', 'loss', 'loss', 'auc', 'loss']
    """
    match = _SPLIT.match(key)
    return match.group("quantity") if match else key


def groups(keys: Sequence[str]) -> dict[str, list[str]]:
    """The series keys by quantity, in the order they were first logged."""
    grouped: dict[str, list[str]] = {}
    for key in keys:
        grouped.setdefault(quantity(key), []).append(key)
    return grouped


def _thinned(series: Series) -> list[tuple[float, float]]:
    count = len(series)
    stride = max(1, -(-count // MAX_POINTS))
    points = [(float(series.steps[i]), series.values[i]) for i in range(0, count, stride)]
    if count and (count - 1) % stride:
        points.append((float(series.steps[count - 1]), series.values[count - 1]))
    return [(x, y) for x, y in points if y == y and abs(y) != float("inf")]


def _number(value: float) -> str:
    return f"{value:.4g}"


def _legend(key: str) -> str:
    """A series' name as its chart's legend shows it: without ``system/``, at most 24 chars."""
    name = key[len(SYSTEM_PREFIX):] if key.startswith(SYSTEM_PREFIX) else key
    return name if len(name) <= 24 else name[:23] + "…"


def chart(title: str, lines: Mapping[str, Series]) -> str:
    """One chart: each line of ``lines`` (key -> series) over its steps, with a legend."""
    width, height, pad = CHART_WIDTH, CHART_HEIGHT, 28
    points = {key: _thinned(series) for key, series in lines.items()}
    every = [p for line in points.values() for p in line]
    parts = [f'<rect width="{width}" height="{height}" fill="white" stroke="#ddd"/>',
             f'<text x="6" y="14" font-size="12" font-weight="bold">{html.escape(_legend(title))}</text>']
    if every:
        xs, ys = [p[0] for p in every], [p[1] for p in every]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
        plot_w, plot_h = width - pad - 8, height - pad - 24

        def place(x: float, y: float) -> str:
            return (f"{pad + (x - x0) / (x1 - x0) * plot_w:.1f},"
                    f"{20 + plot_h - (y - y0) / (y1 - y0) * plot_h:.1f}")

        parts.append(f'<text x="2" y="28" font-size="9" fill="#666">{_number(y1)}</text>')
        parts.append(f'<text x="2" y="{20 + plot_h}" font-size="9" fill="#666">{_number(y0)}</text>')
        parts.append(f'<text x="{pad}" y="{height - 4}" font-size="9" fill="#666">'
                     f'step {_number(x0)}–{_number(x1)}</text>')
        for line, color in zip(points.values(), itertools.cycle(COLORS), strict=False):
            if len(line) == 1:
                x, y = place(*line[0]).split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
            elif line:
                path = " ".join(place(x, y) for x, y in line)
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                             f'points="{path}"/>')
    legend_x = width - 8
    for index, ((key, series), color) in enumerate(zip(lines.items(), itertools.cycle(COLORS),
                                                       strict=False)):
        latest = _number(series.values[-1]) if len(series) else "–"
        parts.append(f'<text x="{legend_x}" y="{28 + 11 * index}" font-size="10" fill="{color}" '
                     f'text-anchor="end">{html.escape(_legend(key))} {latest}</text>')
    return "".join(parts)


def picture(series: Mapping[str, Series], elapsed_seconds: float, title: str) -> str:
    """The panel as one SVG: a chart per quantity (system metrics last), elapsed time on top."""
    keys = [k for k in series if not k.startswith(SYSTEM_PREFIX)]
    keys += [k for k in series if k.startswith(SYSTEM_PREFIX)]
    charts = list(groups(keys).items())
    rows = max(1, -(-len(charts) // COLUMNS))
    columns = min(COLUMNS, max(1, len(charts)))
    width, height = columns * (CHART_WIDTH + 8), 22 + rows * (CHART_HEIGHT + 8)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" class="nbtrack-live">',
             f'<text x="2" y="15" font-size="12" fill="#444">{html.escape(title)} · '
             f'{elapsed_seconds:.1f} s</text>']
    for index, (name, keys_of) in enumerate(charts):
        x = (index % COLUMNS) * (CHART_WIDTH + 8)
        y = 22 + (index // COLUMNS) * (CHART_HEIGHT + 8)
        parts.append(f'<g transform="translate({x},{y})">'
                     f'{chart(name, {k: series[k] for k in keys_of})}</g>')
    parts.append("</svg>")
    return "".join(parts)


def text_summary(series: Mapping[str, Series], elapsed_seconds: float, title: str) -> str:
    """The panel's plain-text form: the latest value of each series."""
    latest = ", ".join(f"{k}={_number(s.values[-1])}" for k, s in series.items()
                       if len(s) and not k.startswith(SYSTEM_PREFIX))
    return f"{title} · {elapsed_seconds:.1f} s · {latest}"


class LivePanel:
    """The panel of one running cell: drawn on the first point, then at most every
    ``interval`` seconds, and a last time when the cell ends.
    """

    def __init__(self, publish: Publish, title: str, started: float | None = None,
                 interval: float = INTERVAL_SECONDS) -> None:
        self.publish = publish
        self.title = title
        self.started = time.monotonic() if started is None else started
        self.interval = interval
        self.display_id = f"nbtrack-live-{uuid.uuid4().hex}"
        self.shown = False
        self.draws = 0
        # When the next redraw is due, in wall-clock ms: log_metric compares the timestamp it
        # takes anyway with it, so a point costs one comparison, not a call and a clock read.
        self.next_ms = 0

    def draw(self, series: Mapping[str, Series]) -> None:
        """Publish the panel (the first time) or update it in place."""
        now = time.monotonic()
        self.next_ms = int(time.time() * 1000 + self.interval * 1000)
        elapsed = now - self.started
        bundle = {"image/svg+xml": picture(series, elapsed, self.title),
                  "text/plain": text_summary(series, elapsed, self.title)}
        self.publish(bundle, METADATA, self.display_id, self.shown)
        self.shown = True
        self.draws += 1
