"""Matplotlib figures a tracked cell shows, as PNG bytes.

Figures are caught when they are displayed (the inline backend shows and closes them at the end of
the cell, ``plt.show()`` in a loop shows each one at once), and any figure the cell opened but never
displayed (a non-inline backend, a terminal) is caught when the cell ends. matplotlib is never
imported here unless the user's code already did.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
from typing import Any

from nbtrack.record import Artifact


class FigureCollector:
    """Collects the figures of one tracked cell."""

    def __init__(self, dpi: float | None = None) -> None:
        self._dpi = dpi
        self._images: list[tuple[str, bytes]] = []
        self._digests: set[str] = set()
        # Figures by id(), with the figure itself kept alive until the cell ends: a figure the
        # cell closed could otherwise be collected and its id() reused by a new one.
        self._seen: dict[int, Any] = {}
        self._open_before: dict[int, Any] = {}
        self.problems: list[str] = []

    def start(self) -> None:
        """Remember which pyplot figures were open before the cell, so they are not the cell's."""
        self._open_before = {id(figure): figure for figure in _open_figures()}

    def add(self, figure: Any, label: str | None = None, png: bytes | None = None) -> None:
        """Keep a figure as it looks now (called when it is displayed, or by log_figure).

        ``png`` is the image the display already drew; without it the figure is rendered here.
        """
        self._seen[id(figure)] = figure
        if png is None:
            try:
                buffer = io.BytesIO()
                figure.savefig(buffer, format="png", dpi=self._dpi, bbox_inches="tight")
            except Exception as error:  # a figure that cannot render must not break the cell
                self.problems.append(f"figure not logged: it could not be rendered ({error!r})")
                return
            png = buffer.getvalue()
        digest = hashlib.sha1(png).hexdigest()
        if digest in self._digests:  # shown twice unchanged (display(fig), then the inline flush)
            return
        self._digests.add(digest)
        self._images.append((_slug(label) if label else _figure_label(figure), png))

    def finish(self) -> None:
        """Catch figures the cell opened and never displayed."""
        for figure in _open_figures():
            if id(figure) not in self._open_before and id(figure) not in self._seen:
                self.add(figure)

    def artifacts(self) -> list[Artifact]:
        """Return the figures as PNG artifacts under ``figures/``."""
        return [
            Artifact(f"figures/{index:02d}-{label}.png", png)
            for index, (label, png) in enumerate(self._images, start=1)
        ]


def _open_figures() -> list[Any]:
    """Figures pyplot holds open, without making any of them current (``plt.figure(n)`` would)."""
    helpers = sys.modules.get("matplotlib._pylab_helpers")
    if helpers is None or "matplotlib.pyplot" not in sys.modules:
        return []
    return [manager.canvas.figure for manager in helpers.Gcf.get_all_fig_managers()]


def _figure_label(figure: Any) -> str:
    title = ""
    try:
        suptitle = getattr(figure, "_suptitle", None)
        if suptitle is not None and suptitle.get_text():
            title = suptitle.get_text()
        else:
            for axes in figure.get_axes():
                if axes.get_title():
                    title = axes.get_title()
                    break
    except Exception:  # a label is a nicety; a figure without one is still logged
        title = ""
    return _slug(title)


def _slug(title: str) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", title).strip("-").lower()[:40]
    return slug or "figure"
