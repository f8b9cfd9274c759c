"""Sweep throughput: N executions of a small tracked notebook, three ways.

The notebook loads nbtrack, has a ``parameters`` cell (``x = 0``) and one ``%%track`` cell
(``y = x * 2.0``), so every execution records one run with param ``x`` and metric ``y``. For each
number of executions N, each way runs in its own new SQLite store in a temporary folder:

``nbtrack run -j 2``
    one ``nbtrack run NOTEBOOK --grid x=0,1,...,N-1 -j 2`` command;
``papermill, one after another``
    one Python process calling ``papermill.execute_notebook(..., parameters={"x": i})`` N times;
``nbconvert x N``
    N ``jupyter nbconvert --to notebook --execute`` processes one after another, on copies of the
    notebook whose ``parameters`` cell was rewritten beforehand (untimed: nbconvert has no
    parameters);
``nbtrack run --engine ray``
    the same ``nbtrack run`` command as tasks on a local Ray cluster of two CPUs (two worker
    processes), started once before and not timed, as a user's cluster is already running. Not
    with ``--quick`` or ``--no-ray`` (starting the cluster takes 20-30 s here).

The time is the wall time of the whole command(s), process start included. Afterwards the store is
read: there must be N finished runs, with ``x`` = 0..N-1 and ``y = 2x``, or the time is not kept.

    python -m benchmarks.sweep [--quick] [--executions 4,16] [--no-ray]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import RAY_ENV, local_ray_cluster  # noqa: E402  (the tests' own Ray starter)

from benchmarks._common import (  # noqa: E402
    PYTHON,
    REPO,
    environment,
    format_table,
    isolated_env,
    load_average,
    ratio,
    write_results,
)

NAME = "sweep"
WAYS = ("nbtrack run -j 2", "papermill, one after another", "nbconvert x N")
RAY_WAY = "nbtrack run --engine ray"
EXECUTIONS = (4, 16)
QUICK_EXECUTIONS = (2,)
TIMEOUT_S = 1800
BIN = Path(PYTHON).parent


def notebook(x: int = 0) -> dict:
    """The small notebook, with ``x`` in its parameters cell."""

    def code(source: str, tags: list[str] | None = None) -> dict:
        return {"cell_type": "code", "execution_count": None, "id": f"c{abs(hash(source)) % 10**8}",
                "metadata": {"tags": tags} if tags else {}, "outputs": [], "source": source}

    return {
        "cells": [code("%load_ext nbtrack"), code(f"x = {x}", ["parameters"]),
                  code("%%track -n sweep\ny = x * 2.0")],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def _write(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content, indent=1), encoding="utf-8")
    return path


def commands(way: str, n: int, folder: Path, ray_address: str | None = None) -> list[list[str]]:
    """The command lines that make ``n`` executions ``way`` (copies written into ``folder``)."""
    source = _write(folder / "small.ipynb", notebook())
    grid = ",".join(str(i) for i in range(n))
    if way == "nbtrack run -j 2":
        return [[str(BIN / "nbtrack"), "run", str(source), "--grid", f"x={grid}", "-j", "2",
                 "-e", "sweep", "-o", str(folder / "out"), "--no-progress"]]
    if way == RAY_WAY:
        return [[str(BIN / "nbtrack"), "run", str(source), "--grid", f"x={grid}", "--engine",
                 "ray", "--address", ray_address, "-e", "sweep", "-o", str(folder / "out"),
                 "--no-progress"]]
    if way == "papermill, one after another":
        script = ("import sys, papermill\n"
                  f"for i in range({n}):\n"
                  f"    papermill.execute_notebook({str(source)!r}, f'{folder}/out-{{i}}.ipynb',\n"
                  "                               parameters={'x': i}, progress_bar=False)\n")
        return [[PYTHON, "-c", script]]
    copies = [_write(folder / f"small-{i}.ipynb", notebook(i)) for i in range(n)]
    return [[str(BIN / "jupyter"), "nbconvert", "--to", "notebook", "--execute", str(copy),
             "--output-dir", str(folder / "out")] for copy in copies]


def verify(folder: Path, n: int) -> list[str]:
    """Problems with the runs the executions left in the store (N runs, x = 0..N-1, y = 2x)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweep")
    if experiment is None:
        return ["experiment 'sweep' was not created"]
    runs = [run for run in client.search_runs([experiment.experiment_id], max_results=10_000)
            if "nbtrack.sweep_parent" not in run.data.tags]  # the sweep's parent run
    problems = []
    if len(runs) != n:
        problems.append(f"{len(runs)} runs, not {n}")
    xs = sorted(int(run.data.params.get("x", -1)) for run in runs)
    if xs != list(range(n)):
        problems.append(f"params x {xs}, not 0..{n - 1}")
    for run in runs:
        x = int(run.data.params.get("x", -1))
        if run.info.status != "FINISHED" or run.data.metrics.get("y") != 2.0 * x:
            problems.append(f"run {run.info.run_id}: status {run.info.status}, "
                            f"y {run.data.metrics.get('y')} for x {x}")
    return problems


def sample(way: str, n: int, ray_address: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="nbtrack-bench-sweep-") as temporary:
        folder = Path(temporary)
        env = isolated_env(folder, MLFLOW_EXPERIMENT_NAME="sweep", **RAY_ENV)
        lines = commands(way, n, folder, ray_address)
        start = time.perf_counter()
        for line in lines:
            done = subprocess.run(line, cwd=folder, env=env, capture_output=True, text=True,
                                  timeout=TIMEOUT_S)
            if done.returncode != 0:
                return {"problems": [f"{' '.join(line[:3])} ... exited {done.returncode}: "
                                     f"{done.stderr.strip()[-1200:]}"]}
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "problems": verify(folder, n)}


def run(sizes: tuple[int, ...], ray: bool = True) -> dict:
    started = time.perf_counter()
    rows, problems = [], []
    plan = [(way, n) for n in sizes for way in WAYS]
    # Last, in a cluster of its own: Ray's idle processes use CPU the other ways would feel.
    plan += [(RAY_WAY, n) for n in sizes] if ray else []
    with contextlib.ExitStack() as stack:
        ray_address = None
        for way, n in plan:
            if way == RAY_WAY and ray_address is None:
                begun = time.perf_counter()
                ray_address = stack.enter_context(local_ray_cluster(Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="nbtrack-ray-")))))
                print(f"  local Ray cluster (2 CPUs) started in {time.perf_counter() - begun:.0f} "
                      "s (not timed)", flush=True)
            result = sample(way, n, ray_address)
            row = {"way": way, "executions": n}
            if result["problems"]:
                row["problems"] = result["problems"]
                problems += [f"{way}, {n} executions: {p}" for p in result["problems"]]
            else:
                row["seconds"] = result["seconds"]
                row["executions_per_minute"] = n / result["seconds"] * 60
            rows.append(row)
            status = "FAILED" if "problems" in row else f"{row['seconds']:.1f} s"
            print(f"  {way:<30} {n:>3} executions: {status}  ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    for n in sizes:
        reference = next((r for r in rows if r["executions"] == n and r["way"] == WAYS[0]), None)
        for row in rows:
            if row["executions"] == n and reference and "seconds" in row and "seconds" in reference:
                row["ratio_to_nbtrack"] = row["seconds"] / reference["seconds"]
    return {"rows": rows, "problems": problems, "total_seconds": time.perf_counter() - started}


def report(results: dict) -> str:
    table = []
    for row in results["rows"]:
        if "seconds" in row:
            table.append([row["way"], str(row["executions"]), f"{row['seconds']:.1f}",
                          f"{row['executions_per_minute']:.1f}", ratio(row.get("ratio_to_nbtrack"))])
        else:
            table.append([row["way"], str(row["executions"]), "failed", "-", "-"])
    lines = ["", "Sweep throughput: executions of a small tracked notebook (wall time of the commands)",
             "", format_table(["way", "executions", "seconds", "per minute", "time / nbtrack run"],
                              table)]
    verification = results["verification"]
    lines.append(f"verification: OK, {verification['sweeps_checked']} sweeps' runs read back"
                 if verification["ok"] else "verification FAILED:\n" +
                 "\n".join(f"  - {p}" for p in verification["problems"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EXECUTIONS[0]} executions per way, for CI")
    parser.add_argument("--executions", help="comma-separated numbers of executions "
                        f"(default {','.join(map(str, EXECUTIONS))})")
    parser.add_argument("--no-ray", action="store_true",
                        help="leave out the Ray engine (always left out with --quick)")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.executions.split(",")) if args.executions else (
        QUICK_EXECUTIONS if args.quick else EXECUTIONS)
    results = {"benchmark": NAME, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "quick": args.quick, "environment": environment(),
               "load_average_1min": {"start": load_average()}}
    results.update(run(sizes, ray=not (args.quick or args.no_ray)))
    results["load_average_1min"]["end"] = load_average()
    results["verification"] = {"ok": not results["problems"], "problems": results.pop("problems"),
                               "sweeps_checked": sum(1 for r in results["rows"] if "seconds" in r)}
    print(report(results))
    write_results(NAME, results)
    return 0 if results["verification"]["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("MPLBACKEND", "Agg")
    raise SystemExit(main())
