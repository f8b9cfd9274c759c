"""What loading nbtrack costs a kernel, against ``import mlflow``, in fresh processes.

Each sample is a new Python process with a new, empty SQLite store in a temporary folder:

``import mlflow``
    the import alone, timed inside the process;
``%load_ext nbtrack``
    a cell ``%load_ext nbtrack`` run by a fresh in-process IPython shell (IPython itself is
    imported and the shell created before the clock starts: a kernel already has them);
``first %%track cell``
    the same process then runs a first tracked cell (``x = 1`` and a computed metric) in the empty
    store: nbtrack imports MLflow as the loading cell ends, and a cell that starts meanwhile waits
    for that import (never runs beside it), so this is where MLflow's import and store creation
    land;
``first hand-written run``
    ``import mlflow`` plus a first ``mlflow.start_run()`` logging the same param and metric.

Before a time is kept the process checks the work was done: the ``track`` magic is registered,
and the run with its param and metric is in the store. Variants are interleaved across repeats.

    python -m benchmarks.load_ext [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._common import (
    PYTHON,
    REPO,
    environment,
    format_table,
    isolated_env,
    load_average,
    ms,
    ratio,
    stats,
    write_results,
)

NAME = "load_ext"
DEFAULT_REPEATS = 10
QUICK_REPEATS = 2
TIMEOUT_S = 300

# What each child process measures; the keys are the timed steps it reports.
VARIANTS = {
    "mlflow": ("import mlflow", "first hand-written run"),
    "nbtrack": ("%load_ext nbtrack", "first %%track cell"),
}
FIRST_CELL = "%%track -n first\nx = 1\ny = x * 2.0\n"


def _child_mlflow() -> dict:
    start = time.perf_counter()
    import mlflow

    imported = time.perf_counter()
    with mlflow.start_run(run_name="first") as run:
        mlflow.log_param("x", 1)
        mlflow.log_metric("y", 2.0)
    done = time.perf_counter()
    stored = mlflow.MlflowClient().get_run(run.info.run_id)
    problems = _check_run(stored)
    return {"import mlflow": imported - start, "first hand-written run": done - start,
            "problems": problems}


def _child_nbtrack() -> dict:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    start = time.perf_counter()
    shell.run_cell("%load_ext nbtrack")
    loaded = time.perf_counter()
    mlflow_after_load = "mlflow" in sys.modules
    result = shell.run_cell(FIRST_CELL, store_history=True)
    cell_done = time.perf_counter()
    problems = []
    if "track" not in shell.magics_manager.magics["cell"]:
        problems.append("%%track is not registered after %load_ext nbtrack")
    if not result.success:
        problems.append(f"the first tracked cell failed: {result.error_in_exec!r}")
    import nbtrack

    flush = getattr(nbtrack, "flush", None)
    if flush is not None:
        flush()
    from mlflow import MlflowClient

    run_id = nbtrack.last_run()
    if run_id is None:
        problems.append("the first tracked cell recorded no run")
    else:
        problems += _check_run(MlflowClient().get_run(run_id))
    return {"%load_ext nbtrack": loaded - start, "first %%track cell": cell_done - loaded,
            "mlflow_imported_by_load_ext": mlflow_after_load, "problems": problems}


def _check_run(run) -> list[str]:
    problems = []
    if run.data.params.get("x") != "1":
        problems.append(f"param x is {run.data.params.get('x')!r}, not '1'")
    if run.data.metrics.get("y") != 2.0:
        problems.append(f"metric y is {run.data.metrics.get('y')!r}, not 2.0")
    if run.info.status != "FINISHED":
        problems.append(f"run status {run.info.status}")
    return problems


def sample(variant: str) -> dict:
    """One fresh process measuring ``variant``; its report plus the process's whole wall time."""
    with tempfile.TemporaryDirectory(prefix="nbtrack-bench-load-") as folder:
        env = isolated_env(Path(folder))
        start = time.perf_counter()
        done = subprocess.run([PYTHON, "-m", "benchmarks.load_ext", "--child", variant], cwd=folder,
                              env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"problems": [f"{variant} child exited {done.returncode}: {done.stderr[-800:]}"]}
    report = json.loads(lines[-1])
    report["process_wall_s"] = wall
    return report


def run(repeats: int) -> dict:
    started = time.perf_counter()
    results: dict = {"benchmark": NAME, "started_at": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "repeats": repeats, "environment": environment(),
        "load_average_1min": {"start": load_average()}}
    samples: dict[str, list[float]] = {step: [] for steps in VARIANTS.values() for step in steps}
    walls: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    problems: list[str] = []
    mlflow_by_load = []
    for repeat in range(repeats):
        order = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            report = sample(variant)
            if report["problems"]:
                problems += [f"repeat {repeat + 1}, {variant}: {p}" for p in report["problems"]]
                continue
            for step in VARIANTS[variant]:
                samples[step].append(report[step])
            walls[variant].append(report["process_wall_s"])
            if variant == "nbtrack":
                mlflow_by_load.append(report["mlflow_imported_by_load_ext"])
        print(f"  repeat {repeat + 1}/{repeats} done ({time.perf_counter() - started:.0f} s)",
              flush=True)
    results["steps"] = {step: stats(values) for step, values in samples.items() if values}
    results["process_wall"] = {variant: stats(values) for variant, values in walls.items() if values}
    results["mlflow_imported_by_load_ext"] = any(mlflow_by_load)
    steps = results["steps"]
    if "%load_ext nbtrack" in steps and "import mlflow" in steps:
        results["ratio_load_ext_to_import_mlflow"] = (steps["%load_ext nbtrack"]["median_s"]
                                                      / steps["import mlflow"]["median_s"])
    if "first %%track cell" in steps and "first hand-written run" in steps:
        # Time to the first record: load_ext + first cell, against import + first run.
        nbtrack_total = steps["%load_ext nbtrack"]["median_s"] + steps["first %%track cell"]["median_s"]
        results["first_record_s"] = {"nbtrack": nbtrack_total,
                                     "mlflow": steps["first hand-written run"]["median_s"]}
    results["verification"] = {"ok": not problems, "problems": problems,
                               "samples_checked": sum(len(v) for v in walls.values())}
    results["load_average_1min"]["end"] = load_average()
    results["total_seconds"] = time.perf_counter() - started
    return results


def report(results: dict) -> str:
    rows = [[step, ms(value["median_s"]), ms(value["p95_s"]), str(len(value["samples_s"]))]
            for step, value in results["steps"].items()]
    lines = ["", f"Loading nbtrack vs importing MLflow: fresh processes, {results['repeats']} "
             "repeat(s); ms", "", format_table(["step", "median", "p95", "n"], rows)]
    if "ratio_load_ext_to_import_mlflow" in results:
        lines.append(f"%load_ext nbtrack / import mlflow: "
                     f"{ratio(results['ratio_load_ext_to_import_mlflow'])}; MLflow imported by "
                     f"load_ext: {results['mlflow_imported_by_load_ext']}")
    if "first_record_s" in results:
        first = results["first_record_s"]
        lines.append(f"to the first record in a new store: nbtrack {ms(first['nbtrack'])} ms "
                     f"(load_ext + first cell), MLflow {ms(first['mlflow'])} ms (import + first run)")
    verification = results["verification"]
    lines.append("verification: OK" if verification["ok"] else
                 "verification FAILED:\n" + "\n".join(f"  - {p}" for p in verification["problems"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load_ext", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPEATS} repeats, for CI")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"fresh processes per variant (default {DEFAULT_REPEATS})")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child_mlflow() if args.child == "mlflow" else _child_nbtrack()))
        return 0
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    results = run(repeats)
    results["quick"] = args.quick
    print(report(results))
    write_results(NAME, results)
    return 0 if results["verification"]["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
