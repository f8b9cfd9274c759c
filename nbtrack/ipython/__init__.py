"""Loading nbtrack into an IPython shell, and unloading it cleanly (``%reload_ext`` safe)."""

from __future__ import annotations

from nbtrack import tracker as session
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
    tracker = session.Tracker(settings)
    magics = TrackMagics(shell, tracker)
    shell.register_magics(magics)
    magics.install()
    session.set_current(tracker)
    _INSTALLED[id(shell)] = magics


def unload(shell) -> None:
    """Remove the hooks and the tracker that :func:`load` installed on ``shell``."""
    magics = _INSTALLED.pop(id(shell), None)
    if magics is None:
        return
    magics.uninstall()
    if magics.tracker.settings in shell.configurables:
        shell.configurables.remove(magics.tracker.settings)
    if session.current() is magics.tracker:
        session.set_current(None)
