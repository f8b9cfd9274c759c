"""The IPython layer, the only code that imports IPython: loading nbtrack into a shell and
unloading it cleanly (``%reload_ext`` safe). The magics parse what the user typed
(:mod:`~nbtrack.ipython.magics`); the shell's hooks begin and end tracked cells
(:mod:`~nbtrack.ipython.hooks`); both hand off to the plain :class:`~nbtrack.tracker.Tracker`.
"""

from __future__ import annotations

from nbtrack import tracker as tracking
from nbtrack.config import Nbtrack
from nbtrack.ipython.magics import TrackMagics

# Per shell, the magics instance whose hooks are installed; unload removes exactly those.
_INSTALLED: dict[int, TrackMagics] = {}


def load(shell) -> None:
    """Register the magics and hooks on ``shell``; loading twice keeps one set."""
    if id(shell) in _INSTALLED:
        return
    settings = Nbtrack(parent=shell)  # picks up c.Nbtrack.* from ipython_config.py
    shell.configurables.append(settings)  # so %config Nbtrack shows and sets it
    tracker = tracking.Tracker(settings)
    tracker.publish = publish_display
    magics = TrackMagics(shell, tracker)
    shell.register_magics(magics)
    magics.hooks.install()
    tracking.set_current(tracker)
    _INSTALLED[id(shell)] = magics


def publish_display(bundle, metadata, display_id: str, update: bool) -> None:
    """Show ``bundle`` under the running cell, or replace the display ``display_id`` in place."""
    from IPython.display import display

    display(dict(bundle), raw=True, metadata=dict(metadata), display_id=display_id, update=update)


def unload(shell) -> None:
    """Remove the hooks and the tracker that :func:`load` installed on ``shell``."""
    magics = _INSTALLED.pop(id(shell), None)
    if magics is None:
        return
    magics.hooks.uninstall()
    if magics.tracker.settings in shell.configurables:
        shell.configurables.remove(magics.tracker.settings)
    if tracking.current() is magics.tracker:
        tracking.set_current(None)
