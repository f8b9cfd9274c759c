"""Matplotlib figures a tracked cell shows, as PNG bytes.

Figures are caught when they are displayed (the inline backend shows and closes them at the end of
the cell, ``plt.show()`` in a loop shows each one at once), and the PNG the display drew is kept, so
a figure is rendered once. Any figure the cell opened but never displayed is caught when the cell
ends: under a backend that draws only when asked (Agg: a script, a terminal) it is kept as a pickled
copy, which the recorder draws to PNG later, on its own thread (:func:`render_snapshot`), while no
user code runs (:data:`nbtrack.threads.GATE`); under any other backend it is drawn at once.
matplotlib is never imported here unless the user's code already did.
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import pickle
import re
import sys
from dataclasses import replace
from typing import Any

from nbtrack.record import Artifact, FigureSnapshot
from nbtrack.threads import GATE

# Backends that draw only when asked to (savefig): scripts, terminals, nbconvert with MPLBACKEND.
# Under any other backend a cell's undisplayed figures are drawn at once, not later on another
# thread: a GUI window or ipympl redraws figures on the main thread between cells, and in Jupyter
# a widget's callback (ipywidgets.interact) may draw between cells too, outside any execution the
# drawing gate sees. The inline backend displays a cell's figures itself, so few are left.
_NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}




class FigureCollector:
    """Collects the figures of one tracked cell."""

    def __init__(self, dpi: float | None = None) -> None:
        self._dpi = dpi
        self._images: list[tuple[str, bytes | FigureSnapshot]] = []
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
        """Catch figures the cell opened and never displayed, as copies to draw later (or drawn
        now, for a figure that cannot be copied or a backend that redraws between cells).
        """
        later = _draws_only_when_asked()
        for figure in _open_figures():
            if id(figure) not in self._open_before and id(figure) not in self._seen:
                if not later:
                    self.add(figure)
                    continue
                try:
                    pickled = _pickle_figure(figure)
                except Exception:  # e.g. a lambda tick formatter: draw it now instead
                    self.add(figure)
                    continue
                self._seen[id(figure)] = figure
                self._images.append((_figure_label(figure), FigureSnapshot("", pickled, self._dpi)))

    def artifacts(self) -> list[Artifact | FigureSnapshot]:
        """Return the figures as PNG artifacts under ``figures/`` (copies still to be drawn as
        :class:`FigureSnapshot`).
        """
        found: list[Artifact | FigureSnapshot] = []
        for index, (label, image) in enumerate(self._images, start=1):
            path = f"figures/{index:02d}-{label}.png"
            if isinstance(image, FigureSnapshot):
                found.append(replace(image, path=path))
            else:
                found.append(Artifact(path, image))
        return found


def render_snapshot(snapshot: FigureSnapshot) -> bytes:
    """Draw a pickled figure to PNG bytes, as the collector would have drawn the live figure.

    The copy belongs to no pyplot window, and it is drawn only while no user code runs
    (:data:`~nbtrack.threads.GATE`), so drawing it on another thread leaves the user's figures
    alone. rcParams read at draw time are the ones in force when it is drawn.
    """
    with GATE.idle():
        figure = pickle.loads(snapshot.pickled_figure)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=snapshot.dpi, bbox_inches="tight")
    return buffer.getvalue()


def _pickle_figure(figure: Any) -> bytes:
    """The figure pickled without its pyplot registration.

    matplotlib marks a pickled pyplot figure to be re-registered with pyplot when unpickled,
    which would open a new pyplot figure on the recorder's thread; the mark is dropped.
    """
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = copyreg.dispatch_table.copy()
    pickler.dispatch_table[type(figure)] = _reduce_unregistered
    pickler.dump(figure)
    return buffer.getvalue()


def _reduce_unregistered(figure: Any):
    reduced = figure.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    state = dict(reduced[2])
    state.pop("_restore_to_pylab", None)
    return (*reduced[:2], state, *reduced[3:])


def _draws_only_when_asked() -> bool:
    """Whether matplotlib's backend is one that never redraws a figure by itself."""
    matplotlib = sys.modules.get("matplotlib")
    try:
        return matplotlib is not None and matplotlib.get_backend().lower() in _NON_INTERACTIVE
    except Exception:  # an unknown state: drawing at once is the safe choice
        return False


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
