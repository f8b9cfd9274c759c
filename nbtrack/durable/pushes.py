"""Pushes the target refused, kept in the journal until ``nbtrack sync`` finishes them.

``nbtrack push`` waits for a target that does not answer (the writer's retry pauses, up to
``$NBTRACK_PUSH_WAIT_SECONDS``), then keeps what it could not copy here, as a tracked cell keeps
the runs a store refuses: one JSON file a push under ``<journal>/pushes/``, written whole
(temporary name, then renamed) and readable by its owner only, since a target URI may hold a
password. The copy itself is idempotent (each copy carries its origin), so finishing a kept push
twice, or after part of it went through, copies nothing twice.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nbtrack.config import PUSH_WAIT_ENV, journal_root
from nbtrack.durable.journal import PUSHES

DEFAULT_PUSH_WAIT_S = 60.0


@dataclass(frozen=True)
class KeptPush:
    """Runs of ``source`` still to copy to ``target``, with the push's options."""

    source: str
    target: str
    run_ids: tuple[str, ...]
    register: bool = False
    move_aliases: bool = False
    kept_at: float = field(default_factory=time.time)


def push_wait_seconds() -> float:
    """How long ``nbtrack push`` waits for a target that does not answer before keeping the push."""
    value = os.environ.get(PUSH_WAIT_ENV, "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_PUSH_WAIT_S
    except ValueError:
        return DEFAULT_PUSH_WAIT_S


def pushes_folder() -> Path:
    """Where kept pushes wait: ``<journal>/pushes``."""
    return journal_root() / PUSHES


def keep(push: KeptPush) -> Path:
    """Write ``push`` to the journal; its file."""
    folder = pushes_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.json"
    partial = path.with_name("." + path.name)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump(asdict(push), file)
    os.replace(partial, path)
    return path


def kept() -> list[tuple[Path, KeptPush]]:
    """The kept pushes, oldest first; a file that cannot be read is left where it is, unlisted."""
    folder = pushes_folder()
    found = []
    for path in sorted(folder.glob("[!.]*.json")) if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found.append((path, KeptPush(data["source"], data["target"], tuple(data["run_ids"]),
                                         bool(data.get("register")),
                                         bool(data.get("move_aliases")),
                                         float(data.get("kept_at", 0)))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def done(path: Path) -> None:
    """The kept push at ``path`` went through."""
    path.unlink(missing_ok=True)
