"""``nbtrack push``, ``export`` and ``import``: runs from one store to another, or to a file."""

from __future__ import annotations


def add_commands(commands) -> None:
    """Add the publishing commands to the ``nbtrack`` parser (none yet)."""
