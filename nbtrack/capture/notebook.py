"""Every notebook file nbtrack reads: which notebook the kernel runs, a redacted snapshot of it for
a run's lineage, its saved code cells and its ``parameters`` cell.

``nbtrack run`` reads the notebooks it executes through nbformat (:func:`read`). A kernel reads its
own notebook as the JSON it is, without nbformat: importing nbformat loads jsonschema and its format
checkers, 2-3 s of CPU on every kernel's first tracked cell (a third of a small sweep's execution
here), for a validation lineage does not need. A file that is not a version 4 notebook is treated
as no notebook at all, and the snapshot is written as nbformat writes one (sorted keys, indent 1).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nbtrack.capture.secrets import Redactor


def read(path: Path | str):
    """The notebook at ``path`` as an nbformat v4 ``NotebookNode`` (nbformat's errors if not)."""
    import nbformat  # here, not at the top: loading nbtrack must not wait for it

    return nbformat.read(os.fspath(path), as_version=4)


def parse(snapshot: bytes | str | None) -> dict | None:
    """A version 4 notebook's JSON (a run's snapshot, a file's text) as a dict, or None when
    there is none or it is not one.
    """
    if not snapshot:
        return None
    try:
        notebook = json.loads(snapshot)
    except ValueError:  # not JSON, not UTF-8
        return None
    if (not isinstance(notebook, dict) or notebook.get("nbformat") != 4
            or not isinstance(notebook.get("cells"), list)
            or not all(isinstance(cell, dict) for cell in notebook["cells"])):
        return None
    return notebook


def _source(cell: dict) -> str:
    """A cell's source, which a notebook file may hold as one string or a list of lines."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def code_sources(path: Path) -> list[str]:
    """The sources of a notebook file's code cells; none when it cannot be read."""
    try:
        cells = read(path).cells
    except Exception:  # not written (the kernel never started), not a notebook
        return []
    return [cell.get("source", "") for cell in cells if cell.get("cell_type") == "code"]


def notebook_path(environ: Mapping[str, str], namespace: Mapping[str, Any], cwd: Path) -> Path | None:
    """Find the notebook the kernel runs, from what frontends and runners tell the kernel.

    JupyterLab and Notebook 7 set ``JPY_SESSION_NAME``, VS Code binds ``__vsc_ipynb_file__``,
    papermill sets ``PAPERMILL_INPUT_PATH``, and ``nbtrack run`` sets ``JPY_SESSION_NAME``.
    """
    candidates = [
        namespace.get("__vsc_ipynb_file__"),
        environ.get("JPY_SESSION_NAME"),
        environ.get("PAPERMILL_INPUT_PATH"),
    ]
    for candidate in candidates:
        if not candidate or not isinstance(candidate, str):
            continue
        path = Path(candidate)
        if not path.is_absolute():
            # JupyterLab gives a path relative to the server's root; the kernel runs in the
            # notebook's folder, so the file name is what finds it.
            for option in (cwd / path, cwd / path.name):
                if option.exists():
                    return option.resolve()
            return (cwd / path.name).resolve()
        return path
    return None


def notebook_snapshot(path: Path, redactor: Redactor) -> bytes | None:
    """A copy of the saved notebook with secrets redacted, or None when it cannot be read."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    # Reading, validating and redacting a notebook takes milliseconds, and most cells run
    # without the notebook being saved in between: keep the last copy while the file is unchanged.
    return _notebook_snapshot(os.fspath(path), status.st_mtime_ns, status.st_size, redactor.key())


@functools.lru_cache(maxsize=4)
def _notebook_snapshot(path: str, mtime_ns: int, size: int,
                       secrets: frozenset[str]) -> bytes | None:
    redactor = Redactor(secrets)
    try:
        notebook = parse(Path(path).read_bytes())
    except OSError:
        notebook = None
    if notebook is None:  # unreadable, not JSON, not a notebook: lineage goes on without it
        return None
    for cell in notebook["cells"]:
        cell["source"] = redactor.redact(_source(cell))
        # Every text an output holds: streams, every mime type but images, error messages
        # and tracebacks (a failing cell's message often quotes the value it choked on).
        if "outputs" in cell:  # code cells only: a markdown cell with outputs is not valid
            cell["outputs"] = [_redact_output(output, redactor) for output in cell["outputs"]]
    return (json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def _redact_output(value: Any, redactor: Redactor, key: str = "") -> Any:
    if key.startswith("image/"):
        return value
    if isinstance(value, str):
        return redactor.redact(value)
    if isinstance(value, list):
        return [_redact_output(item, redactor) for item in value]
    if isinstance(value, dict):
        return type(value)((k, _redact_output(v, redactor, str(k))) for k, v in value.items())
    return value


# Each tracked cell compares the kernel's history with the saved notebook, which mostly has not
# changed since the last cell: parse a snapshot once.
@functools.lru_cache(maxsize=4)
def saved_cells(snapshot: bytes | None) -> tuple[tuple[int, str], ...] | None:
    """The code cells of a notebook snapshot as ``(cell number, source)``, numbered from 1 among
    all cells; None when there is no snapshot or it cannot be read.
    """
    notebook = parse(snapshot)
    if notebook is None:
        return None
    return tuple((number, _source(cell)) for number, cell in enumerate(notebook["cells"], start=1)
                 if cell.get("cell_type") == "code")


def parameters_source(snapshot: bytes | None) -> str | None:
    """The source of the saved notebook's ``parameters``-tagged cell, stripped."""
    notebook = parse(snapshot)
    if notebook is None:
        return None
    for cell in notebook["cells"]:
        metadata = cell.get("metadata")
        tags = metadata.get("tags", []) if isinstance(metadata, dict) else []
        if cell.get("cell_type") == "code" and "parameters" in tags:
            return _source(cell).strip()
    return None
