"""The leaderboard at 1,000, 10,000 and 100,000 runs against ``search_runs`` for the same question.

One SQLite MLflow store per size holds an experiment of N finished runs that look like tracked
cells: a run name, the ``nbtrack.notebook`` tag, 4 params (``C`` and ``model`` vary, ``seed`` is
unique, ``max_iter`` constant), the metrics ``val_auc`` and ``train_time`` (rounded, so ties occur)
and ``val_loss`` on 9 runs in 10; one run in 20 is FAILED. The stores are built once with
``MlflowClient.create_run`` / ``log_batch`` / ``set_terminated`` (about 30 ms a run, so 100,000
runs take most of an hour; the build prints its progress) and kept in ``$NBTRACK_BENCH_STORES``
(default ``$TMPDIR/nbtrack-board-scale``); they are reused while :data:`BUILD_VERSION` is unchanged.

Each question is asked by three tools, each answer checked against the others before its time is
kept (same run ids in the same order; for the filter, the same set of runs):

``nbtrack``
    :func:`nbtrack.store.query.runs_page` + :func:`nbtrack.store.query.rank`, which is what the board and
    ``nbtrack runs`` do: the run index (:mod:`nbtrack.store.index`) brought up to date from MLflow,
    then ranked and filtered in memory;
``MlflowClient.search_runs``
    ``order_by=["metrics.<m> DESC"], max_results=50`` (the filter as ``filter_string``), in a
    child process stopped after ``--client-timeout`` seconds (SQLite orders 100,000 runs by a
    metric in many minutes); once stopped at a size it is not asked that size's other questions;
``mlflow.search_runs``
    every matching run into a DataFrame, then sorted by pandas as the board did before the index.

The operations, in order, on a fresh process state:

``first page, cold``
    the board's first page ranked by ``val_auc`` with no index file (built from MLflow);
``first page, warm``
    the same question again from a new :class:`RunIndex` on the existing file (a new kernel);
``re-rank``
    ranked by ``val_loss`` lowest first, from the index already in memory;
``filter``
    ``params.model = 'logreg' and metrics.val_auc > 0.8``, ranked by ``val_auc``.

Memory is the peak of ``tracemalloc`` during the operation (Python allocations, which is where
the index and MLflow's entities live). Times are wall-clock, median of ``--repeats`` for the warm
operations (cold is measured once: it deletes the index). Nothing is asserted about them.

    python -m benchmarks.board_scale             # 1,000, 10,000 and 100,000 runs
    python -m benchmarks.board_scale --quick     # 100 and 500 runs, 1 repeat (CI)
    python -m benchmarks.board_scale --sizes 1000,10000 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._common import (
    REPO,
    environment,
    format_table,
    load_average,
    median,
    write_results,
)

NAME = "board_scale"
SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (100, 500)
REPEATS = 3
QUICK_REPEATS = 1
TOP = 50
EXPERIMENT = "board-scale"
STORES_ENV = "NBTRACK_BENCH_STORES"
# Bump when the content of a built store changes: older stores are then rebuilt.
BUILD_VERSION = 1
SWEEP_RUNS = 5_000  # runs a sweep writes before the looks after it (at most the store's size)
QUICK_SWEEP_RUNS = 20
BATCH_START_MS = 1_700_000_000_000  # start time of run 0; run i starts i seconds later

FILTER = "params.model = 'logreg' and metrics.val_auc > 0.8"
MODELS = ("logreg", "forest", "boosting")


def stores_dir() -> Path:
    """Where built stores are kept: ``$NBTRACK_BENCH_STORES``, else a folder in the temp dir."""
    return Path(os.environ.get(STORES_ENV) or Path(tempfile.gettempdir()) / "nbtrack-board-scale")


def run_content(i: int) -> dict:
    """What run ``i`` of a built store holds (deterministic, so stores can be checked)."""
    rng = random.Random(i)
    metrics = {"val_auc": round(0.5 + 0.5 * rng.random(), 3),
               "train_time": round(rng.uniform(0.1, 30.0), 1)}
    if i % 10 != 3:
        metrics["val_loss"] = round(rng.uniform(0.05, 1.5), 4)
    return {
        "name": f"cell-{i}",
        "status": "FAILED" if i % 20 == 7 else "FINISHED",
        "start_time": BATCH_START_MS + i * 1000,
        "params": {"C": str([0.01, 0.1, 1.0, 10.0][i % 4]), "model": MODELS[i % 3],
                   "seed": str(i), "max_iter": "1000"},
        "metrics": metrics,
        "tags": {"nbtrack.notebook": f"notebooks/train_{i % 5}.ipynb", "mlflow.user": "bench",
                 "mlflow.source.type": "NOTEBOOK"},
    }


def store_path(size: int) -> Path:
    return stores_dir() / f"runs-{size}-v{BUILD_VERSION}.db"


def build_store(size: int) -> Path:
    """The store of ``size`` runs, built once (with progress on stdout) and reused after."""
    path = store_path(size)
    marker = path.with_suffix(".done")
    if path.exists() and marker.exists():
        return path
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    path.parent.mkdir(parents=True, exist_ok=True)
    # SQLite commits three times a run; on tmpfs a commit costs no disk flush, 3-4x faster.
    scratch_root = Path("/dev/shm") if Path("/dev/shm").is_dir() else path.parent
    scratch = Path(tempfile.mkdtemp(prefix="board-scale-", dir=scratch_root))
    try:
        db = scratch / path.name
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        experiment_id = client.create_experiment(
            EXPERIMENT, artifact_location=str(path.parent / "artifacts"))
        started = time.perf_counter()
        step = max(size // 20, 1)
        for i in range(size):
            content = run_content(i)
            run = client.create_run(experiment_id, start_time=content["start_time"],
                                    run_name=content["name"], tags=content["tags"])
            stamp = content["start_time"] + 500
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, v, stamp, 0) for k, v in content["metrics"].items()],
                params=[Param(k, v) for k, v in content["params"].items()],
                tags=[RunTag("bench.index", str(i))],
            )
            client.set_terminated(run.info.run_id, status=content["status"],
                                  end_time=content["start_time"] + 900)
            if (i + 1) % step == 0 or i + 1 == size:
                spent = time.perf_counter() - started
                left = spent / (i + 1) * (size - i - 1)
                print(f"  building {size:,} runs: {i + 1:,} done, {spent:,.0f} s, "
                      f"about {left:,.0f} s left", flush=True)
        shutil.move(str(db), path)
        marker.write_text(json.dumps({"size": size, "experiment_id": experiment_id,
                                      "build_version": BUILD_VERSION}))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


# -- the questions ----------------------------------------------------------------------------------

NBTRACK = "nbtrack (run index)"
CLIENT = "MlflowClient.search_runs"
FLUENT = "mlflow.search_runs + rank"
OPERATIONS = (
    # (operation, metric, ascending, filter)
    ("first page", "val_auc", False, None),
    ("re-rank", "val_loss", True, None),
    ("filter", "val_auc", False, FILTER),
)


def _reset_index() -> None:
    """Forget the process's in-memory indexes, as a new kernel starts without them."""
    from nbtrack.store.index import RunIndex

    RunIndex._shared.clear()
    gc.collect()


def ask_nbtrack(uri: str, metric: str, ascending: bool, filter_string: str | None,
                background: bool = False) -> list[str]:
    """What ``nbtrack runs`` and ``leaderboard()`` do (the board with ``background``, so a due
    full read goes on in the background): ``runs_page`` then ``rank``; the ranked run ids."""
    from nbtrack.store import query

    page = query.runs_page(EXPERIMENT, filter=filter_string, metric=metric, ascending=ascending,
                           top=TOP, tracking_uri=uri, background=background)
    board = query.rank(page, metric=page.attrs["metric"], ascending=ascending, top=TOP)
    return list(board["run_id"])


def ask_client(uri: str, metric: str, ascending: bool, filter_string: str | None) -> list[str]:
    """``MlflowClient.search_runs`` ordered by the metric, the first page only."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    found = client.search_runs([experiment_id], filter_string=filter_string or "",
                               order_by=[f"metrics.{metric} {'ASC' if ascending else 'DESC'}"],
                               max_results=TOP)
    return [run.info.run_id for run in found]


def ask_fluent(uri: str, metric: str, ascending: bool, filter_string: str | None) -> list[str]:
    """Every matching run into a DataFrame, ranked by pandas: what the board did before."""
    from nbtrack.store import query

    table = query.runs(EXPERIMENT, filter=filter_string, tracking_uri=uri)
    board = query.rank(table, metric=metric, ascending=ascending, top=TOP)
    return list(board["run_id"])


ASK = {NBTRACK: ask_nbtrack, CLIENT: ask_client, FLUENT: ask_fluent}


def timed(function, *args) -> tuple[float, object]:
    started = time.perf_counter()
    answer = function(*args)
    return time.perf_counter() - started, answer


def peak_memory(function, *args) -> tuple[int, object]:
    """Peak Python allocations (bytes) while ``function`` runs, from tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        answer = function(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, answer


def check_store(uri: str, size: int, answers: dict) -> list[str]:
    """The work was done: the index holds every run of the store, and the first-ranked runs
    hold the values the build gave them."""
    from mlflow import MlflowClient

    from nbtrack.store.index import RunIndex

    problems = []
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    index = RunIndex.shared(uri, experiment_id)
    if len(index) != size:
        problems.append(f"{size:,} runs: the index holds {len(index):,} runs")
    for run_id in answers.get("first page", [])[:5]:
        run = client.get_run(run_id)
        expected = run_content(int(run.data.tags["bench.index"]))
        if run.data.metrics != expected["metrics"] or run.data.params != expected["params"]:
            problems.append(f"{size:,} runs: run {run_id} does not hold what the build logged")
    return problems


def client_in_child(uri: str, metric: str, ascending: bool, filter_string: str | None,
                    timeout: float) -> tuple[float | None, list[str] | None]:
    """:func:`ask_client` in a child process, stopped after ``timeout`` seconds (at 100,000 runs
    SQLite takes many minutes to order by a metric); (None, None) when stopped."""
    question = json.dumps([uri, metric, ascending, filter_string])
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.board_scale", "--child", question],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None, None
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return answer["seconds"], answer["ids"]


def _child(question: str) -> int:
    uri, metric, ascending, filter_string = json.loads(question)
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments()  # imports and engine outside the clock
    seconds, ids = timed(ask_client, uri, metric, ascending, filter_string)
    print(json.dumps({"seconds": seconds, "ids": ids}))
    return 0


def measure_size(size: int, repeats: int, memory: bool, client_timeout: float = 300.0,
                 sweep_runs: int = 0) -> tuple[list[dict], list[str]]:
    """Every tool's answer to every question at one size: rows and problems found."""
    from mlflow import MlflowClient

    from nbtrack.store.index import RunIndex

    path = build_store(size)
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri)
    client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=1)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    index_file = RunIndex(uri, experiment_id).path
    rows, problems, reference = [], [], {}
    baseline_repeats = repeats if size <= 10_000 else 1
    client_stopped = ""

    def keep(operation, tool, samples, answer, expected):
        if answer != expected:
            problems.append(f"{size:,} runs, {operation}: {tool} ranked other runs than "
                            f"{FLUENT} ({_first_difference(answer, expected)})")
            return None
        row = {"size": size, "operation": operation, "tool": tool, "seconds": median(samples),
               "samples_s": samples}
        rows.append(row)
        return row

    # The reference answers: the board's former way, every run through mlflow.search_runs.
    for operation, metric, ascending, filter_string in OPERATIONS:
        samples = []
        for _ in range(baseline_repeats):
            seconds, answer = timed(ask_fluent, uri, metric, ascending, filter_string)
            samples.append(seconds)
        reference[operation] = answer
        keep(operation, FLUENT, samples, answer, answer)
        print(f"  {size:,} runs, {operation}: {FLUENT} {median(samples):.2f} s", flush=True)
        if client_stopped:
            rows.append({"size": size, "operation": operation, "tool": CLIENT, "seconds": None,
                         "note": f"not asked: {client_stopped}"})
            continue
        samples = []
        for _ in range(baseline_repeats):
            seconds, answer = client_in_child(uri, metric, ascending, filter_string,
                                              client_timeout)
            if seconds is None:
                client_stopped = f"the first page took over {client_timeout:g} s"
                rows.append({"size": size, "operation": operation, "tool": CLIENT,
                             "seconds": None, "note": f"stopped after {client_timeout:g} s"})
                print(f"  {size:,} runs, {operation}: {CLIENT} stopped after "
                      f"{client_timeout:.0f} s", flush=True)
                break
            samples.append(seconds)
        if samples:
            keep(operation, CLIENT, samples, answer, reference[operation])
            print(f"  {size:,} runs, {operation}: {CLIENT} {median(samples):.2f} s", flush=True)

    # nbtrack: cold (no index file, a new process), warm (the file, a new process), then the
    # board's other questions from the index in memory.
    _reset_index()
    index_file.unlink(missing_ok=True)
    seconds, answer = timed(ask_nbtrack, uri, "val_auc", False, None)
    keep("first page, cold", NBTRACK, [seconds], answer, reference["first page"])
    print(f"  {size:,} runs, first page, cold: {NBTRACK} {seconds:.2f} s", flush=True)
    samples = []
    for _ in range(repeats):
        _reset_index()
        seconds, answer = timed(ask_nbtrack, uri, "val_auc", False, None)
        samples.append(seconds)
    keep("first page, warm", NBTRACK, samples, answer, reference["first page"])
    print(f"  {size:,} runs, first page, warm: {NBTRACK} {median(samples):.2f} s", flush=True)
    for operation, metric, ascending, filter_string in OPERATIONS[1:]:
        samples = []
        for _ in range(repeats):
            seconds, answer = timed(ask_nbtrack, uri, metric, ascending, filter_string)
            samples.append(seconds)
        keep(operation, NBTRACK, samples, answer, reference[operation])
        print(f"  {size:,} runs, {operation}: {NBTRACK} {median(samples):.3f} s", flush=True)
    problems += check_store(uri, size, reference)
    rows += measure_first_looks(uri, experiment_id, index_file, size, reference, problems)
    if sweep_runs:
        rows += measure_look_after_sweep(path, size, min(sweep_runs, size), problems)

    if memory:
        # A separate pass: tracemalloc slows Python down, so no time is taken under it.
        found = {}
        _reset_index()
        index_file.unlink(missing_ok=True)
        found[("first page, cold", NBTRACK)] = peak_memory(ask_nbtrack, uri, "val_auc", False,
                                                           None)[0]
        _reset_index()
        found[("first page, warm", NBTRACK)] = peak_memory(ask_nbtrack, uri, "val_auc", False,
                                                           None)[0]
        for operation, metric, ascending, filter_string in OPERATIONS[1:]:
            found[(operation, NBTRACK)] = peak_memory(ask_nbtrack, uri, metric, ascending,
                                                      filter_string)[0]
        if not client_stopped:
            found[("first page", CLIENT)] = peak_memory(ask_client, uri, "val_auc", False,
                                                        None)[0]
        found[("first page", FLUENT)] = peak_memory(ask_fluent, uri, "val_auc", False, None)[0]
        for row in rows:
            peak = found.get((row["operation"], row["tool"]))
            if peak is not None:
                row["memory_bytes"] = peak
                row["memory"] = f"{peak / 2**20:,.1f} MB peak (tracemalloc)"
    _reset_index()
    return rows, problems


def fill_as_recorder(uri: str, experiment_id: str) -> None:
    """The index file as nbtrack's recorders leave it after writing every run of the store
    (:func:`nbtrack.store.index_file.record_runs` a run as it finishes; here in batches)."""
    from mlflow import MlflowClient

    from nbtrack.store import index_file

    client = MlflowClient(tracking_uri=uri)
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=10_000, page_token=token)
        index_file.record_runs(uri, list(page))
        token = page.token
        if not token:
            return


def board_index(uri: str, experiment_id: str):
    from nbtrack.store.index import RunIndex

    return RunIndex.shared(uri, experiment_id)


def measure_first_looks(uri: str, experiment_id: str, index_file: Path, size: int,
                        reference: dict, problems: list[str]) -> list[dict]:
    """The board's first look in a new process (``background=True``): on a store whose index
    nbtrack's recorders filled as they wrote it, and on a store nbtrack never saw (the newest
    runs at once, every run once the background read ends)."""
    found = []

    def row(operation, seconds, answer, note=""):
        expected = reference["first page"]
        if answer is not None and answer != expected:
            problems.append(f"{size:,} runs, {operation}: ranked other runs than {FLUENT} "
                            f"({_first_difference(answer, expected)})")
            return
        found.append({"size": size, "operation": operation, "tool": NBTRACK,
                      "seconds": seconds, "samples_s": [seconds], "note": note})
        print(f"  {size:,} runs, {operation}: {NBTRACK} {seconds:.2f} s {note}", flush=True)

    _reset_index()
    index_file.unlink(missing_ok=True)
    fill_as_recorder(uri, experiment_id)
    _reset_index()
    seconds, answer = timed(ask_nbtrack, uri, "val_auc", False, None, True)
    row("first look, index the recorder filled", seconds, answer)
    board_index(uri, experiment_id).wait()

    _reset_index()
    index_file.unlink(missing_ok=True)
    started = time.perf_counter()
    seconds, answer = timed(ask_nbtrack, uri, "val_auc", False, None, True)
    index = board_index(uri, experiment_id)
    shown = len(index)
    index.wait()
    filled = time.perf_counter() - started
    row("first look, store never indexed: first page", seconds, None,
        f"(ranks the newest {shown:,} runs)" if shown < size else "")
    row("first look, store never indexed: every run ranked", filled,
        ask_nbtrack(uri, "val_auc", False, None, True))
    return found


def measure_look_after_sweep(path: Path, size: int, sweep_runs: int,
                             problems: list[str]) -> list[dict]:
    """Right after a sweep wrote ``sweep_runs`` runs (another tool's: ``MlflowClient``) into a
    copy of the store the board had indexed: its first look, then its second, against
    ``mlflow.search_runs`` reading the store once."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    scratch = Path(tempfile.mkdtemp(prefix="board-scale-sweep-"))
    try:
        copy = scratch / path.name
        shutil.copy(path, copy)
        uri = f"sqlite:///{copy}"
        _reset_index()
        ask_nbtrack(uri, "val_auc", False, None)  # the board's index, current
        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        for i in range(sweep_runs):
            run = client.create_run(experiment_id, run_name=f"sweep-{i}")
            client.log_batch(run.info.run_id, metrics=[
                Metric("val_auc", round(random.Random(i).random(), 3), int(time.time() * 1000), 0)])
            client.set_terminated(run.info.run_id)
        rows = []
        for operation in ("look after a sweep: first", "look after a sweep: second"):
            seconds, answer = timed(ask_nbtrack, uri, "val_auc", False, None, True)
            read = board_index(uri, experiment_id).last_refresh.get("read")
            rows.append({"size": size, "operation": operation, "tool": NBTRACK,
                         "seconds": seconds, "samples_s": [seconds],
                         "note": f"{sweep_runs:,} new runs; {read:,} read from MLflow"})
            print(f"  {size:,} runs, {operation}: {NBTRACK} {seconds:.2f} s ({read:,} runs read)",
                  flush=True)
        seconds, expected = timed(ask_fluent, uri, "val_auc", False, None)
        if answer != expected:
            problems.append(f"{size:,} runs, look after a sweep: ranked other runs than {FLUENT} "
                            f"({_first_difference(answer, expected)})")
        rows.append({"size": size, "operation": "look after a sweep", "tool": FLUENT,
                     "seconds": seconds, "samples_s": [seconds]})
        return rows
    finally:
        _reset_index()
        shutil.rmtree(scratch, ignore_errors=True)


def _first_difference(answer: list[str], expected: list[str]) -> str:
    if len(answer) != len(expected):
        return f"{len(answer)} runs instead of {len(expected)}"
    position = next(i for i, (a, b) in enumerate(zip(answer, expected, strict=True)) if a != b)
    return f"rank {position + 1}: {answer[position]} instead of {expected[position]}"


# -- the report ----------------------------------------------------------------------------------


def report(results: dict) -> str:
    """The table: each measured operation, its time, and how many times faster than each
    baseline asking the same question."""
    rows = results["rows"]
    header = ["runs", "operation", "tool", "seconds", "vs MlflowClient", "vs mlflow.search_runs",
              "memory (MB)"]
    lines = []
    for row in rows:
        if row["seconds"] is None:
            lines.append([f"{row['size']:,}", row["operation"], row["tool"], row.get("note", "-"),
                          "", "", ""])
            continue
        question = ("first page" if row["operation"].startswith(("first page", "first look"))
                    else "look after a sweep" if row["operation"].startswith("look after")
                    else row["operation"])
        ratios = []
        for tool in (CLIENT, FLUENT):
            base = next((r for r in rows if r["size"] == row["size"] and r["tool"] == tool
                         and r["operation"] == question), None)
            if (base is None or base["seconds"] is None or row["tool"] != NBTRACK
                    or row["seconds"] <= 0):
                ratios.append("")
            else:
                ratio = base["seconds"] / row["seconds"]
                ratios.append(f"{ratio:,.1f}x faster" if ratio >= 1 else f"{1 / ratio:,.1f}x slower")
        memory = row.get("memory_bytes")
        lines.append([f"{row['size']:,}", row["operation"], row["tool"], f"{row['seconds']:.3f}",
                      *ratios, "" if memory is None else f"{memory / 2**20:,.1f}"])
    return format_table(header, lines)


def main(argv: list[str] | None = None) -> int:
    """Build the stores if needed, ask every question at every size, print and write results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.board_scale",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(f'{s:,}' for s in QUICK_SIZES)} runs, 1 repeat (CI)")
    parser.add_argument("--sizes", help="comma-separated numbers of runs")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"samples of each warm operation (default {REPEATS})")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument("--client-timeout", type=float, default=300.0,
                        help="seconds MlflowClient.search_runs may take for one question; it is "
                             "not asked the others at that size once it runs over (default 300)")
    parser.add_argument("--sweep-runs", type=int, default=None,
                        help="runs a sweep writes before the looks after it (default "
                             f"{SWEEP_RUNS:,}, {QUICK_SWEEP_RUNS} with --quick; 0: skip)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (
        QUICK_SIZES if args.quick else SIZES)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    sweep_runs = args.sweep_runs if args.sweep_runs is not None else (
        QUICK_SWEEP_RUNS if args.quick else SWEEP_RUNS)

    cache = Path(tempfile.mkdtemp(prefix="board-scale-index-"))
    saved = {k: os.environ.get(k) for k in ("NBTRACK_CACHE_DIR", "NBTRACK_INDEX_RECONCILE_SECONDS")}
    # The index goes to a folder of the benchmark's own; no full re-read falls due mid-benchmark
    # (its cost is the cold first page, measured on its own).
    os.environ["NBTRACK_CACHE_DIR"] = str(cache)
    os.environ["NBTRACK_INDEX_RECONCILE_SECONDS"] = str(24 * 3600)
    results = {"benchmark": NAME, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "quick": args.quick, "sizes": list(sizes), "repeats": repeats, "top": TOP,
               "filter": FILTER, "stores": str(stores_dir()), "environment": environment(),
               "load_average_1min": {"start": load_average()}, "rows": []}
    problems = []
    try:
        for size in sizes:
            print(f"{size:,} runs", flush=True)
            rows, found = measure_size(size, repeats, memory=not args.no_memory,
                                       client_timeout=args.client_timeout,
                                       sweep_runs=sweep_runs)
            results["rows"] += rows
            problems += found
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    results["load_average_1min"]["end"] = load_average()
    results["verification"] = {"ok": not problems, "problems": problems,
                               "answers_compared": sum(1 for r in results["rows"]
                                                       if r["seconds"] is not None)}
    print(report(results))
    for problem in problems:
        print(f"NOT VERIFIED: {problem}", file=sys.stderr)
    write_results(NAME, results)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
