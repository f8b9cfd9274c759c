"""Step-metric throughput: how fast a training loop can log points, and how fast they land.

For each method and each number of points N (10^3 .. 10^6), one fresh process logs the series
``loss = 0.5 * step`` for steps ``0 .. N-1`` into a new store in a temporary folder:

``nbtrack``
    ``nbtrack.log_metric`` in a ``%%track`` cell of an in-process IPython shell (a first tracked
    cell ran before, untimed, so MLflow is imported and the store exists);
``mlflow.log_metric``
    MLflow's fluent call in a loop inside ``mlflow.start_run()``;
``log_batch``
    one ``MlflowClient.log_batch`` per 1,000 points (MLflow's per-call limit), ``Metric`` objects
    built in the timed loop;
``mlflow async``
    ``mlflow.log_metric(..., synchronous=False)``, then ``mlflow.flush_async_logging()``;
``wandb offline``
    ``run.log({"loss": v}, step=i)`` with ``WANDB_MODE=offline``, then ``run.finish()``;
``trackio``
    ``trackio.log`` into trackio's local SQLite file, then ``trackio.finish()``.

Two rates per sample: the rate the caller sees (points / time spent in the logging loop) and the
rate points reach the store (points / time from the loop's start until the store has them: for
nbtrack until the cell ends and ``nbtrack.flush()`` returns when nbtrack has one; for MLflow async
until ``flush_async_logging`` returns; for W&B and trackio until ``finish()`` returns). Setting up
the run (``start_run``, ``wandb.init``...) is outside both clocks.

Before a time is kept, the process reads the series back from the store (MLflow's
``get_metric_history``, W&B's offline ``.wandb`` file, trackio's SQLite file) and checks every
point's step and value. A method whose next size would take longer than the budget (projected
from its last measured size) is skipped at that size, and the report says so.

The ``nbtrack`` row runs as terminal IPython would: the live panel is on (nbtrack's default when a
person runs the cell) and its text form goes to stdout. The live panel's own measurement, side by
side, runs where a person sees the panel: a real ipykernel started through jupyter_client, its
displays sent over ZeroMQ to the benchmark's process, which counts them. The same loop runs in
``%%track --live`` and ``%%track --no-live`` cells, alternating, twice per size; each run's
series is read back from the store, and the panel's last display must show the last point. Issue
16's bound: at least 400,000 points/s to the caller with the panel showing.

    python -m benchmarks.metric_throughput [--quick] [--sizes 1000,10000] [--budget SECONDS]
                                           [--live-sizes 100000,1000000] [--live-repeats 3]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sqlite3
import struct
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
    rate,
    write_results,
)

NAME = "metric_throughput"
METHODS = ("nbtrack", "mlflow.log_metric", "log_batch", "mlflow async", "wandb offline", "trackio")
SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000,)
BUDGET_S = 180.0  # per sample, projected from the method's previous size
QUICK_BUDGET_S = 30.0
NEEDS = {"wandb offline": "wandb", "trackio": "trackio"}  # the `bench` extra
KEY = "loss"
# The live panel, shown and not shown, in a real kernel (issue 16).
LIVE_SIZES = (100_000, 1_000_000)
QUICK_LIVE_SIZES = (20_000,)
LIVE_REPEATS, QUICK_LIVE_REPEATS = 2, 1
LIVE_TARGET = 400_000  # points/s to the caller with the panel showing


def value_at(step: int) -> float:
    return step * 0.5


# -- the child processes: one method, one size ---------------------------------------------------


def _child_nbtrack(n: int, folder: Path) -> dict:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    for source in ["%load_ext nbtrack", "%track_config -e throughput",
                   f"import time\nimport nbtrack\n_N = {n}", "%%track -n warm-up\nwarm = 1\n"]:
        _ok(shell.run_cell(source, store_history=True), source)
    cell = ("%%track -n throughput\n"
            "_t0 = time.perf_counter()\n"
            "for _i in range(_N):\n"
            f"    nbtrack.log_metric({KEY!r}, _i * 0.5, step=_i)\n"
            "_caller_s = time.perf_counter() - _t0\n")
    _ok(shell.run_cell(cell, store_history=True), cell)
    import nbtrack

    flush = getattr(nbtrack, "flush", None)
    if flush is not None:
        flush()
    stored = time.perf_counter()
    namespace = shell.user_ns
    run_id = nbtrack.last_run()
    return {"caller_s": namespace["_caller_s"], "store_s": stored - namespace["_t0"],
            "store_until": "nbtrack.flush()" if flush else "end of the cell (no nbtrack.flush yet)",
            "problems": _check_mlflow(run_id, n)}


def _ok(result, source: str) -> None:
    if not result.success:
        raise RuntimeError(f"cell failed: {result.error_in_exec or result.error_before_exec!r}\n{source}")


def _child_mlflow_log_metric(n: int, folder: Path) -> dict:
    import mlflow

    with mlflow.start_run() as run:
        start = time.perf_counter()
        for step in range(n):
            mlflow.log_metric(KEY, step * 0.5, step=step)
        caller = time.perf_counter() - start
    return {"caller_s": caller, "store_s": caller, "problems": _check_mlflow(run.info.run_id, n)}


def _child_log_batch(n: int, folder: Path) -> dict:
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        start = time.perf_counter()
        now = int(time.time() * 1000)
        for first in range(0, n, 1000):
            client.log_batch(run.info.run_id, metrics=[
                Metric(KEY, step * 0.5, now, step) for step in range(first, min(first + 1000, n))])
        caller = time.perf_counter() - start
    return {"caller_s": caller, "store_s": caller, "problems": _check_mlflow(run.info.run_id, n)}


def _child_mlflow_async(n: int, folder: Path) -> dict:
    import mlflow

    with mlflow.start_run() as run:
        start = time.perf_counter()
        for step in range(n):
            mlflow.log_metric(KEY, step * 0.5, step=step, synchronous=False)
        caller = time.perf_counter() - start
        mlflow.flush_async_logging()
        stored = time.perf_counter() - start
    return {"caller_s": caller, "store_s": stored, "problems": _check_mlflow(run.info.run_id, n)}


def _check_mlflow(run_id: str | None, n: int) -> list[str]:
    from mlflow import MlflowClient

    if run_id is None:
        return ["no run was recorded"]
    history = MlflowClient().get_metric_history(run_id, KEY)
    points = {point.step: point.value for point in history}
    return _check_points(points, len(history), n)


def _check_points(points: dict[int, float], count: int, n: int) -> list[str]:
    problems = []
    if count != n:
        problems.append(f"{count} points stored, not {n}")
    wrong = [step for step in range(n) if points.get(step) != value_at(step)]
    if wrong:
        problems.append(f"{len(wrong)} steps missing or with a wrong value (first: step {wrong[0]})")
    return problems


WANDB_SETTLE_S = 30.0


def _child_wandb(n: int, folder: Path) -> dict:
    import wandb

    run = wandb.init(project="throughput", dir=str(folder),
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    start = time.perf_counter()
    for step in range(n):
        run.log({KEY: step * 0.5}, step=step)
    caller = time.perf_counter() - start
    run.finish()
    # finish() can return before W&B's service process has written the last records to the
    # file: the store time runs until the file holds every point (or WANDB_SETTLE_S more pass).
    deadline = time.perf_counter() + WANDB_SETTLE_S
    while True:
        stored = time.perf_counter() - start
        files = glob.glob(str(folder / "wandb" / "offline-run-*" / "run-*.wandb"))
        points: dict[int, float] = {}
        count = 0
        if len(files) == 1:
            for item in _wandb_history(Path(files[0])):
                count += 1
                points[int(item["_step"])] = float(item[KEY])
        if count >= n or time.perf_counter() > deadline:
            break
        time.sleep(0.05)
    if len(files) != 1:
        return {"caller_s": caller, "store_s": stored, "problems": [f"{len(files)} .wandb files"]}
    return {"caller_s": caller, "store_s": stored, "problems": _check_points(points, count, n)}


def _wandb_history(path: Path):
    """The history rows of an offline ``.wandb`` file (W&B's LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    block, position, pending = 32768, 7, b""  # 7: the file header (":W&B", version)
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        position += 7
        if kind == 0 and length == 0:
            position += left - 7
            continue
        chunk = data[position:position + length]
        position += length
        if kind in (2, 3):  # first and middle fragments
            pending = chunk if kind == 2 else pending + chunk
            continue
        payload = chunk if kind == 1 else pending + chunk
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            yield {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                   for item in record.history.item}


def _child_trackio(n: int, folder: Path) -> dict:
    import trackio

    trackio.init(project="throughput", name="throughput", auto_log_cpu=False, auto_log_gpu=False)
    start = time.perf_counter()
    for step in range(n):
        trackio.log({KEY: step * 0.5}, step=step)
    caller = time.perf_counter() - start
    trackio.finish()
    stored = time.perf_counter() - start
    database = folder / "trackio" / "throughput.db"
    if not database.exists():
        return {"caller_s": caller, "store_s": stored, "problems": [f"{database} not written"]}
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT step, metrics FROM metrics").fetchall()
    points = {step: json.loads(metrics).get(KEY) for step, metrics in rows}
    return {"caller_s": caller, "store_s": stored, "problems": _check_points(points, len(rows), n)}


LIVE_CELL = """%%track -n {name} {flag}
_t0, _c0 = time.perf_counter(), time.thread_time()
for _i in range(_N):
    nbtrack.log_metric({key!r}, _i * 0.5, step=_i)
_caller_s, _cpu_s = time.perf_counter() - _t0, time.thread_time() - _c0
_panel = _tracking.current().active.live
_draws = 0 if _panel is None else _panel.draws
"""


def _live_child(n: int, repeats: int, folder: Path) -> dict:
    """The loop in ``%%track --live`` and ``--no-live`` cells of a real kernel, alternating which
    goes first; the panel's displays are counted as they arrive here over ZeroMQ.
    """
    from jupyter_client.manager import KernelManager

    # The kernel is this very Python (not whatever python3 kernel the machine has), with no
    # IPython profile of the machine's.
    spec = folder / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "benchmark", "language": "python"}))
    os.environ.update({"JUPYTER_PATH": str(folder / "jupyter"), "IPYTHONDIR": str(folder / "ipython"),
                       "JUPYTER_RUNTIME_DIR": str(folder / "runtime")})
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(folder))
    client = manager.blocking_client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        for source in ["%load_ext nbtrack", "%track_config -e live-throughput",
                       f"import time\nimport nbtrack\nfrom nbtrack import tracker as _tracking\n_N = {n}",
                       "%%track -n warm-up --no-live\nnbtrack.log_metric('warm', 1.0)\n"]:
            _execute(client, source)
        samples: dict[str, list[dict]] = {"panel": [], "no panel": []}
        problems = []
        for repeat in range(repeats):
            order = ("panel", "no panel") if repeat % 2 == 0 else ("no panel", "panel")
            for way in order:
                flag = "--live" if way == "panel" else "--no-live"
                name = f"{way.replace(' ', '-')}-{repeat}"
                displays: list[dict] = []
                values = _execute(client, LIVE_CELL.format(name=name, flag=flag, key=KEY), displays,
                                  ("_caller_s", "_cpu_s", "_draws", "nbtrack.flush(300)",
                                   "nbtrack.last_run()"))
                sample = {"caller_s": float(values["_caller_s"]), "cpu_s": float(values["_cpu_s"]),
                          "draws": int(values["_draws"]), "displays": len(displays)}
                samples[way].append(sample)
                found = [] if values["nbtrack.flush(300)"] else ["nbtrack.flush(300) timed out"]
                found += _check_mlflow(values["nbtrack.last_run()"], n)
                if way == "panel":
                    last = f"{KEY} {value_at(n - 1):.4g}"  # the panel's legend: the latest value
                    if not sample["draws"]:
                        found.append("the panel never drew while the loop ran")
                    if not displays or last not in displays[-1].get("image/svg+xml", ""):
                        found.append(f"the panel's last display does not show {last!r}")
                elif displays:
                    found.append(f"{len(displays)} panel displays with --no-live")
                problems += [f"{way}, run {repeat + 1}: {problem}" for problem in found]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return {"samples": samples, "problems": problems}


def _execute(client, source: str, displays: list | None = None, expressions=()) -> dict:
    """Run ``source`` in the kernel; the panel's displays go to ``displays``; return the
    ``expressions`` evaluated after it (as Python literals)."""
    import ast

    def output(message: dict) -> None:
        content = message["content"]
        if (message["header"]["msg_type"] in ("display_data", "update_display_data")
                and "nbtrack" in content.get("metadata", {}) and displays is not None):
            displays.append(content["data"])
        elif message["header"]["msg_type"] == "error":
            print("\n".join(content["traceback"]), file=sys.stderr)

    reply = client.execute_interactive(source, user_expressions={e: e for e in expressions},
                                       output_hook=output, timeout=600)
    content = reply["content"]
    if content["status"] != "ok":
        raise RuntimeError(f"cell failed: {content.get('ename')}: {content.get('evalue')}\n{source}")
    values = {}
    for expression, result in content["user_expressions"].items():
        if result["status"] != "ok":
            raise RuntimeError(f"{expression}: {result.get('ename')}: {result.get('evalue')}")
        values[expression] = ast.literal_eval(result["data"]["text/plain"])
    return values


CHILDREN = {
    "nbtrack": _child_nbtrack,
    "mlflow.log_metric": _child_mlflow_log_metric,
    "log_batch": _child_log_batch,
    "mlflow async": _child_mlflow_async,
    "wandb offline": _child_wandb,
    "trackio": _child_trackio,
}


# -- the parent: every method at every size ------------------------------------------------------


def available(method: str) -> str | None:
    """Why ``method`` cannot run here, or None."""
    package = NEEDS.get(method)
    if package and importlib.util.find_spec(package) is None:
        return f"{package} is not installed (pip install -e '.[bench]')"
    return None


def sample(method: str, n: int, budget: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="nbtrack-bench-metrics-") as temporary:
        folder = Path(temporary)
        env = isolated_env(folder, WANDB_MODE="offline", WANDB_DIR=str(folder), WANDB_SILENT="true",
                           WANDB_DISABLE_GIT="true", WANDB_CACHE_DIR=str(folder / "wandb-cache"),
                           WANDB_CONFIG_DIR=str(folder / "wandb-config"),
                           TRACKIO_DIR=str(folder / "trackio"), HF_HUB_OFFLINE="1")
        try:
            done = subprocess.run([PYTHON, "-m", "benchmarks.metric_throughput", "--child", method,
                                   str(n), str(folder)], cwd=folder, env=env, capture_output=True,
                                  text=True, timeout=budget * 5 + 120)
        except subprocess.TimeoutExpired:
            return {"problems": [f"timed out after {budget * 5 + 120:.0f} s"]}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"problems": [f"exited {done.returncode}: {done.stderr.strip()[-1500:]}"]}
    return json.loads(lines[-1])


def run(sizes: tuple[int, ...], budget: float, methods: tuple[str, ...]) -> dict:
    started = time.perf_counter()
    rows: list[dict] = []
    problems: list[str] = []
    for method in methods:
        missing = available(method)
        previous: dict | None = None
        for n in sizes:
            row = {"method": method, "points": n}
            if missing:
                row["skipped"] = missing
            elif previous is not None and "store_s" in previous:
                projected = previous["store_s"] * n / previous["points"]
                if projected > budget:
                    row["skipped"] = (f"projected {projected:,.0f} s from {previous['points']:,} "
                                      f"points, over the {budget:.0f} s budget")
            elif previous is not None and "skipped" in previous:
                row["skipped"] = "a smaller size was already skipped"
            elif previous is not None:
                row["skipped"] = "the previous size failed"
            if "skipped" not in row:
                result = sample(method, n, budget)
                if result["problems"]:
                    row["problems"] = result["problems"]
                    problems += [f"{method}, {n:,} points: {p}" for p in result["problems"]]
                else:
                    row.update({key: result[key] for key in ("caller_s", "store_s")})
                    row["caller_rate"] = n / result["caller_s"] if result["caller_s"] > 0 else None
                    row["store_rate"] = n / result["store_s"] if result["store_s"] > 0 else None
                    if "store_until" in result:
                        row["store_until"] = result["store_until"]
            rows.append(row)
            previous = row
            status = row.get("skipped") or ("FAILED" if "problems" in row else
                                            f"{rate(row['caller_rate'])} pts/s caller, "
                                            f"{rate(row['store_rate'])} pts/s to the store")
            print(f"  {method:<18} {n:>9,}: {status}  ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    return {"rows": rows, "problems": problems, "total_seconds": time.perf_counter() - started}


def live_sample(n: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="nbtrack-bench-live-") as temporary:
        folder = Path(temporary)
        # Writing and reading back a million points takes SQLite minutes on a busy machine.
        timeout = 300 + repeats * 2 * (60 + n / 2_000)
        try:
            done = subprocess.run([PYTHON, "-m", "benchmarks.metric_throughput", "--live-child",
                                   str(n), str(repeats), str(folder)], cwd=folder,
                                  env=isolated_env(folder), capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"problems": [f"timed out after {timeout:.0f} s"]}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"problems": [f"exited {done.returncode}: {done.stderr.strip()[-1500:]}"]}
    return json.loads(lines[-1])


def run_live(sizes: tuple[int, ...], repeats: int) -> dict:
    """nbtrack.log_metric with the live panel showing and off, side by side, at each size."""
    from benchmarks._common import median

    rows, problems = [], []
    for n in sizes:
        result = live_sample(n, repeats)
        problems += [f"live panel, {n:,} points: {p}" for p in result["problems"]]
        row: dict = {"points": n, "repeats": repeats}
        if "samples" not in result:
            row["problems"] = result["problems"]
        else:
            row["samples"] = result["samples"]
            for way, key in (("panel", "panel"), ("no panel", "no_panel")):
                row[f"{key}_rate"] = median([n / s["caller_s"] for s in result["samples"][way]])
                row[f"{key}_cpu_rate"] = median([n / s["cpu_s"] for s in result["samples"][way]])
            row["ratio"] = row["panel_rate"] / row["no_panel_rate"]
            row["cpu_ratio"] = row["panel_cpu_rate"] / row["no_panel_cpu_rate"]
            row["draws"] = [s["draws"] for s in result["samples"]["panel"]]
            row["displays"] = [s["displays"] for s in result["samples"]["panel"]]
        rows.append(row)
        status = ("FAILED" if "ratio" not in row else
                  f"{rate(row['panel_rate'])} pts/s with the panel, {rate(row['no_panel_rate'])} "
                  f"without ({row['ratio']:.2f}x), draws {row['draws']}")
        print(f"  live panel         {n:>9,}: {status}", flush=True)
    return {"rows": rows, "problems": problems, "target": LIVE_TARGET}


def live_report(live: dict) -> list[str]:
    table = []
    for row in live["rows"]:
        if "ratio" in row:
            table.append([f"{row['points']:,}", rate(row["no_panel_rate"]), rate(row["panel_rate"]),
                          f"{row['ratio']:.2f}", rate(row["no_panel_cpu_rate"]),
                          rate(row["panel_cpu_rate"]), f"{row['cpu_ratio']:.2f}",
                          ", ".join(map(str, row["draws"])), ", ".join(map(str, row["displays"]))])
        else:
            table.append([f"{row['points']:,}", "-", "-", "-", "-", "-", "-", "-", "failed"])
    lines = ["", "nbtrack.log_metric in a real kernel, live panel off and showing: points/s to the "
             f"caller (wall clock) and per CPU second of the cell's thread, median of "
             f"{live['rows'][0]['repeats'] if live['rows'] else 0}", "",
             format_table(["points", "off", "showing", "ratio", "off/cpu", "showing/cpu",
                           "cpu ratio", "draws in the loop", "displays sent"], table)]
    measured = [row for row in live["rows"] if "ratio" in row]
    if measured:
        worst = min(measured, key=lambda row: row["panel_rate"])
        met = "met" if worst["panel_rate"] >= live["target"] else "NOT met"
        lines.append(f"issue 16, >= {live['target']:,} points/s to the caller with the panel "
                     f"showing: {met} ({rate(worst['panel_rate'])} at worst, "
                     f"{worst['points']:,} points)")
    return lines


def report(results: dict) -> str:
    table = []
    for row in results["rows"]:
        if "caller_rate" in row:
            table.append([row["method"], f"{row['points']:,}", rate(row["caller_rate"]),
                          rate(row["store_rate"]), f"{row['store_s']:,.2f}"])
        else:
            note = row.get("skipped") or "failed: " + "; ".join(row.get("problems", []))[:80]
            table.append([row["method"], f"{row['points']:,}", "-", "-", note])
    lines = ["", "Step-metric throughput: points/s the caller sees and points/s into the store", "",
             format_table(["method", "points", "caller pts/s", "store pts/s", "store s"], table)]
    nbtrack_rows = [row for row in results["rows"] if row["method"] == "nbtrack" and "store_until" in row]
    if nbtrack_rows:
        lines.append(f"nbtrack's store time runs until: {nbtrack_rows[0]['store_until']}")
    if results.get("live_panel"):
        lines += live_report(results["live_panel"])
    verification = results["verification"]
    lines.append(f"verification: OK, {verification['samples_checked']} series read back point by point"
                 if verification["ok"] else "verification FAILED:\n" +
                 "\n".join(f"  - {p}" for p in verification["problems"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metric_throughput",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 points only, for CI")
    parser.add_argument("--sizes", help="comma-separated numbers of points")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds one sample may take (default {BUDGET_S:.0f}, quick "
                             f"{QUICK_BUDGET_S:.0f})")
    parser.add_argument("--methods", help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--live-sizes", help="comma-separated numbers of points for the live "
                        "panel's measurement (0: skip it); default "
                        + ",".join(map(str, LIVE_SIZES)) + ", quick " + ",".join(map(str, QUICK_LIVE_SIZES)))
    parser.add_argument("--live-repeats", type=int, default=None,
                        help=f"runs of each way per size (default {LIVE_REPEATS}, quick "
                             f"{QUICK_LIVE_REPEATS})")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "N", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--live-child", nargs=3, metavar=("N", "REPEATS", "FOLDER"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        method, n, folder = args.child
        os.chdir(folder)
        print(json.dumps(CHILDREN[method](int(n), Path(folder))))
        return 0
    if args.live_child:
        n, repeats, folder = args.live_child
        os.chdir(folder)
        print(json.dumps(_live_child(int(n), int(repeats), Path(folder))))
        return 0
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (
        QUICK_SIZES if args.quick else SIZES)
    budget = args.budget or (QUICK_BUDGET_S if args.quick else BUDGET_S)
    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    results = {"benchmark": NAME, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "quick": args.quick, "sizes": list(sizes), "budget_s": budget,
               "environment": environment(), "load_average_1min": {"start": load_average()}}
    results.update(run(sizes, budget, methods))
    live_sizes = tuple(int(s) for s in args.live_sizes.split(",") if int(s) > 0) if args.live_sizes \
        else (QUICK_LIVE_SIZES if args.quick else LIVE_SIZES)
    if live_sizes:
        repeats = args.live_repeats or (QUICK_LIVE_REPEATS if args.quick else LIVE_REPEATS)
        live = run_live(live_sizes, repeats)
        results["problems"] += live.pop("problems")
        results["live_panel"] = live
    results["load_average_1min"]["end"] = load_average()
    measured = sum(1 for row in results["rows"] if "caller_rate" in row)
    measured += sum(2 * row["repeats"] for row in results.get("live_panel", {}).get("rows", [])
                    if "ratio" in row)
    results["verification"] = {"ok": not results["problems"], "problems": results.pop("problems"),
                               "samples_checked": measured}
    print(report(results))
    write_results(NAME, results)
    return 0 if results["verification"]["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
