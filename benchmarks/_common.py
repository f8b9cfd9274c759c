"""What every benchmark module shares: where results go, statistics, the environment, tables.

Not a benchmark itself (the runner skips modules whose name starts with ``_``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# The runner and the tests point results and the generated page elsewhere with these.
RESULTS_ENV = "NBTRACK_BENCH_RESULTS"
DOCS_ENV = "NBTRACK_BENCH_DOCS"


def results_dir() -> Path:
    """Folder of the JSON results: ``$NBTRACK_BENCH_RESULTS``, else ``benchmarks/results``."""
    return Path(os.environ.get(RESULTS_ENV) or REPO / "benchmarks" / "results")


def docs_dir() -> Path:
    """Folder of ``benchmarks.md`` and its plots: ``$NBTRACK_BENCH_DOCS``, else ``docs``."""
    return Path(os.environ.get(DOCS_ENV) or REPO / "docs")


def write_results(name: str, results: dict, output: Path | None = None) -> Path:
    """Write ``results`` as ``<results_dir>/<name>.json`` (or ``output``); return the path."""
    path = output or results_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"results: {path}")
    return path


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return percentile(values, 50)


def stats(samples: list[float]) -> dict:
    """Samples with their median and p95, the shape every benchmark stores."""
    return {"samples_s": samples, "median_s": median(samples), "p95_s": percentile(samples, 95)}


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def environment() -> dict:
    """Versions, machine and git state, stored with every result."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("nbtrack", "mlflow", "ipython", "matplotlib", "pandas", "numpy", "scikit-learn",
                    "papermill", "nbconvert", "wandb", "trackio"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    git = {}
    try:
        git["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout
        git["dirty"] = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "versions": versions, "git": git}


def isolated_env(folder: Path, **extra: str) -> dict[str, str]:
    """Environment for a child process writing only inside ``folder`` (store, journal, caches)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("NBTRACK_", "MLFLOW_", "WANDB_", "TRACKIO_"))
           and key not in {"JPY_SESSION_NAME", "PAPERMILL_INPUT_PATH"}}
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "NBTRACK_JOURNAL_DIR": str(folder / "journal"),
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.update(extra)
    return env


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A fixed-width table: first column left-aligned, the others right-aligned."""
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(line: list[str]) -> str:
        return "  ".join(text.ljust(width) if i == 0 else text.rjust(width)
                         for i, (text, width) in enumerate(zip(line, widths, strict=True)))

    rendered = [render(line) for line in lines]
    return "\n".join([rendered[0], "-" * len(rendered[0]), *rendered[1:]])


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:,.1f}"


def rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"
