"""Runs in one file: ``nbtrack export`` and ``nbtrack import``.

A bundle is a zip of a small MLflow store of its own (``mlflow.db`` and its ``mlruns/``), made by
pushing the runs into it (:mod:`nbtrack.store.publish`), and a ``manifest.json`` listing every
other member with its size and sha256. Import checks the whole manifest before it writes
anything, then pushes the bundle's runs on: a corrupt or truncated bundle imports nothing, and
importing twice copies nothing twice (each run keeps the origin it had in the exported store).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import zipfile
from pathlib import Path

from nbtrack.errors import NbtrackError

FORMAT = "nbtrack-bundle/1"
MANIFEST = "manifest.json"
STORE_FILE = "mlflow.db"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _inside(folder: Path):
    """MLflow puts a new SQLite store's artifacts in ./mlruns: here, the bundle's folder."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def export_runs(source_uri: str, runs: list, output: Path, on_done=None) -> list:
    """Write ``runs`` of ``source_uri`` (parents first) to the bundle ``output``; return each
    run's :class:`~nbtrack.store.publish.Outcome`. Nothing is written when a run fails.
    """
    from nbtrack.store import publish

    folder = Path(tempfile.mkdtemp(prefix="nbtrack-export-"))
    try:
        store_uri = f"sqlite:///{folder / STORE_FILE}"
        with _inside(folder):
            pusher = publish.Pusher(source_uri, store_uri, keep_origin=True)
            outcomes = publish.push_runs(pusher, runs, on_done)
        if any(o.state == publish.FAILED for o in outcomes):
            return outcomes
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        manifest = {"format": FORMAT, "root": str(folder), "runs": len(runs),
                    "origin": publish.without_credentials(source_uri),
                    "files": {str(p.relative_to(folder)): {"size": p.stat().st_size,
                                                           "sha256": _sha256(p)}
                              for p in files}}
        partial = output.with_name(output.name + ".part")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in files:
                bundle.write(path, str(path.relative_to(folder)))
            bundle.writestr(MANIFEST, json.dumps(manifest, indent=1))
        partial.replace(output)  # a bundle is whole or absent
        return outcomes
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def open_bundle(path: Path) -> tuple[Path, dict]:
    """Check the bundle ``path`` against its manifest and unpack it to a new folder; return
    the folder (the caller removes it) and the manifest. Raises ``NbtrackError`` saying what is
    wrong with a bundle that is not whole.
    """
    if not path.is_file():
        raise NbtrackError(f"no bundle {str(path)!r}.")
    folder = Path(tempfile.mkdtemp(prefix="nbtrack-import-"))
    try:
        try:
            with zipfile.ZipFile(path) as bundle:
                try:
                    manifest = json.loads(bundle.read(MANIFEST))
                except KeyError:
                    raise NbtrackError(f"{path} is not an nbtrack bundle: it has no "
                                       f"{MANIFEST}.") from None
                if manifest.get("format") != FORMAT:
                    raise NbtrackError(f"{path} is not an nbtrack bundle of format {FORMAT}.")
                names = set(bundle.namelist()) - {MANIFEST}
                listed = manifest.get("files", {})
                if names != set(listed):
                    missing = sorted(set(listed) - names) or sorted(names - set(listed))
                    raise NbtrackError(f"{path} does not match its manifest ({missing[0]} "
                                       "missing or unlisted): nothing was imported.")
                for name in sorted(names):
                    target = (folder / name).resolve()
                    if folder.resolve() not in target.parents:
                        raise NbtrackError(f"{path} holds a path outside the bundle: {name}.")
                    bundle.extract(name, folder)
                    if _sha256(target) != listed[name]["sha256"]:
                        raise NbtrackError(f"{path} is corrupt: {name} does not match its "
                                           "sha256 in the manifest; nothing was imported.")
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
            raise NbtrackError(f"{path} is corrupt or truncated ({error}); nothing was "
                               "imported.") from None
        _move_store(folder / STORE_FILE, manifest["root"], str(folder))
        return folder, manifest
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _move_store(database: Path, old: str, new: str) -> None:
    """The bundle's store names its artifacts by the folder it was made in: name the new one.
    (MLflow's own schema: the three columns holding artifact locations.)
    """
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))


def bundle_runs(folder: Path) -> tuple[str, list]:
    """The unpacked bundle's store URI and its runs, parents first."""
    from nbtrack.store import publish

    uri = f"sqlite:///{folder / STORE_FILE}"
    return uri, publish.select_runs(uri, everything=True)
