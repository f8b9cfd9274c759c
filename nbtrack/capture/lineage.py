"""Where a run came from: the notebook, its git state, the kernel's history, package versions."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nbtrack.capture.secrets import Redactor
from nbtrack.config import TRACKING_USERNAME_ENV, git_root

# Distribution name -> module whose presence in sys.modules means the user's code uses it.
KEY_PACKAGES = {
    "mlflow": "mlflow",
    "scikit-learn": "sklearn",
    "numpy": "numpy",
    "pandas": "pandas",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "torch": "torch",
    "tensorflow": "tensorflow",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "ipython": "IPython",
    "nbtrack": "nbtrack",
}


def git_state_soon(folder: Path) -> Future:
    """:func:`git_state` on a background thread, started now: git takes milliseconds a call,
    which the cell's own run time then hides. The future's result is the state.
    """
    global _git_pool
    if _git_pool is None:
        _git_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbtrack-git")
    return _git_pool.submit(git_state, folder)


_git_pool: ThreadPoolExecutor | None = None


def git_state(folder: Path) -> dict[str, str]:
    """Return the commit, dirty flag and branch of the repository holding ``folder`` (empty if none)."""
    if git_root(folder) is None:
        return {}
    # One git call, its output read in one blocking read: this runs on a thread beside the
    # user's cell, and every extra process and wake-up would take the interpreter from it.
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain=v2", "--branch",
             "--untracked-files=no"],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if done.returncode != 0:
        return {}
    headers = dict(line[2:].split(" ", 1) for line in done.stdout.splitlines()
                   if line.startswith("# ") and " " in line[2:])
    commit = headers.get("branch.oid", "")
    if not commit or commit == "(initial)":  # no commit yet
        return {}
    changed = [line for line in done.stdout.splitlines() if line and not line.startswith("#")]
    state = {"commit": commit, "dirty": "true" if changed else "false"}
    branch = headers.get("branch.head")
    if branch:
        state["branch"] = "HEAD" if branch == "(detached)" else branch
    return state


def package_versions(modules: Mapping[str, Any] = sys.modules) -> dict[str, str]:
    """Versions of the key packages the kernel has imported, plus Python's."""
    # mlflow and nbtrack write every run, whether the kernel imported them yet or not.
    imported = frozenset(distribution for distribution, module in KEY_PACKAGES.items()
                         if module in modules or distribution in ("mlflow", "nbtrack"))
    return dict(_versions_of(imported))


@functools.lru_cache(maxsize=64)
def _versions_of(distributions: frozenset[str]) -> tuple[tuple[str, str], ...]:
    # Reading package metadata takes milliseconds a package, and a package a kernel has
    # imported keeps its version for the kernel's life: read once.
    versions = [("python", platform.python_version())]
    for distribution in sorted(distributions):
        try:
            versions.append((distribution, importlib.metadata.version(distribution)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(versions)


def history_text(entries: Iterable[tuple[int, str]], redactor: Redactor) -> str:
    """The kernel's execution history as one Python file, each entry headed ``# In[n]:``."""
    # Entry by entry: the same texts come back cell after cell, and their redaction is kept.
    parts = [f"# In[{count}]:\n{redactor.redact_cached(source).rstrip()}\n"
             for count, source in entries if source.strip()]
    return "\n".join(parts)


def current_user(environ: Mapping[str, str] = os.environ) -> str:
    """Who is working: the MLflow tracking user, else the system user.

    The tracking user is the one MLflow logs in with: ``MLFLOW_TRACKING_USERNAME``, else
    ``mlflow_tracking_username`` in ``~/.mlflow/credentials`` (read the way MLflow reads it).
    """
    if environ.get(TRACKING_USERNAME_ENV):
        return environ[TRACKING_USERNAME_ENV]
    from_file = _credentials_user(environ)
    if from_file:
        return from_file
    for variable in ("USER", "LOGNAME", "USERNAME"):
        if environ.get(variable):
            return environ[variable]
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd entry)
        return "unknown"


def _credentials_user(environ: Mapping[str, str]) -> str | None:
    home = environ.get("HOME") or os.path.expanduser("~")
    path = os.path.join(home, ".mlflow", "credentials")
    try:
        changed = os.stat(path).st_mtime_ns
    except OSError:  # no credentials file
        return None
    return _user_in_credentials(path, changed)


@functools.lru_cache(maxsize=8)
def _user_in_credentials(path: str, changed: int) -> str | None:
    # Cached by the file's modification time: every tracked cell asks.
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except (configparser.Error, UnicodeDecodeError):  # MLflow itself would refuse the file
        return None
    return parser.get("mlflow", "mlflow_tracking_username", fallback=None) or None
