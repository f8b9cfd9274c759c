"""What ``nbtrack run`` records in the store once an execution has ended, whatever engine ran it:
the runs a dead kernel left RUNNING are ended, and the executed notebook, its secrets redacted, is
logged with every run of the execution. Done in the driver, where MLflow is loaded already, rather
than in each execution's process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from nbtrack.batch import KILLED, Execution

# How long an execution's last steps (attaching the executed notebook, ending a dead kernel's
# runs) wait for a store that is down or locked, like a tracked cell in a batch execution.
STORE_WAIT_SECONDS = 120.0


def after_execution(execution: Execution, tracking_uri: str, status: str,
                    reason: str) -> tuple[str, list[str]]:
    """End the runs a dead kernel left RUNNING (``status`` KILLED) and log the executed notebook
    (secrets redacted) with every run of the execution. Returns ``reason``, redacted, and what
    could not be done.
    """
    from nbtrack.store import recorder

    output = execution.output
    redactor = _redactor(output)
    reason = redactor.redact(reason)
    store = recorder.Recorder(tracking_uri)
    notes = []
    if status == KILLED:
        notes.append(when_store_answers(
            lambda: store.end_running_runs(execution.experiment, execution.execution_id, reason),
            "runs the dead kernel left RUNNING not ended (`nbtrack sync` ends them later)"))
    if output.exists():
        import tempfile

        with tempfile.TemporaryDirectory(prefix="nbtrack-") as folder:
            redacted = _redacted_copy(output, Path(folder), redactor)
            if redacted is None:
                notes.append(f"the executed notebook {output} could not be read, so it was not "
                             "logged")
            else:
                notes.append(when_store_answers(
                    lambda: store.attach_to_execution(execution.experiment,
                                                      execution.execution_id, redacted,
                                                      "notebook"),
                    f"executed notebook not attached to its runs; it is at {output}"))
    return reason, [note for note in notes if note]


def when_store_answers(step: Callable[[], object], failed: str) -> str | None:
    """Run ``step``, a write to the store; while the store refuses for now (down, restarting,
    locked), try again for up to STORE_WAIT_SECONDS. The execution's outcome does not depend on
    it: what could not be done is returned as one line (None when all went well).
    """
    from nbtrack.display import short_error
    from nbtrack.durable.writer import retry_pause
    from nbtrack.store.recorder import store_refused

    deadline = time.monotonic() + STORE_WAIT_SECONDS
    attempt = 0
    while True:
        try:
            step()
            return None
        except Exception as error:
            pause = retry_pause(attempt)
            if not store_refused(error) or time.monotonic() + pause > deadline:
                return f"{failed} ({short_error(error)})"
        time.sleep(pause)
        attempt += 1


def _redactor(notebook: Path):
    """What to redact from an executed notebook: secret-named environment variables, URL
    passwords, and the secrets its cells assign (the injected parameters cell included).
    """
    from nbtrack.capture.notebook import code_sources
    from nbtrack.capture.secrets import Redactor

    redactor = Redactor()
    redactor.add_from_environment(os.environ)
    for source in code_sources(notebook):
        redactor.add_from_source(source)
    return redactor


def _redacted_copy(notebook: Path, folder: Path, redactor) -> Path | None:
    """A copy of the executed notebook, under the same name, with its secrets redacted: that
    copy, never the original, is logged with the runs (None when it cannot be read).
    """
    from nbtrack.capture.notebook import notebook_snapshot

    text = notebook_snapshot(notebook, redactor)
    if text is None:
        return None
    copy = folder / notebook.name
    copy.write_bytes(text)
    return copy
