"""``nbtrack push`` of N runs vs logging the same content by hand with MLflow (issue 18, item 7).

The target: pushing 1,000 runs of the showcase notebook's kind takes no more than 2x the time
MLflow needs to log the same content by hand into the same kind of target, measured in the same
run. Every run has 10 params, 3 metrics with a 100-step series each (300 points), 3 tags and two
PNG figures (``figures/loss.png``, ``figures/roc.png``; drawn once with Agg and logged as files).

The source is a new SQLite store in a temporary folder, filled (untimed) with N such runs through
``MlflowClient``. Then, in this order, each into a new SQLite file of its own:

``MLflow by hand``
    in this process, the same content logged the way a user would: ``create_run`` (name, start
    time, tags), one ``log_batch`` (params, every metric point, tags), ``log_artifact`` for each
    figure, ``set_terminated``;
``nbtrack push (CLI)``
    ``python -m nbtrack push -e EXPERIMENT --to sqlite:///... --no-progress`` with
    ``MLFLOW_TRACKING_URI`` naming the source: the command a user types, process start included;
``nbtrack push (in-process)``
    ``nbtrack.store.publish.select_runs`` + ``Pusher`` + ``push_runs`` in this process, so the
    push's own cost shows without the process start and imports.

Each target's experiment is created beforehand (untimed), with its artifact folder in the
temporary folder. Push reads every run back from the source as it copies (runs, metric
histories, artifacts); the hand-written side logs from memory, as a user logging by hand would.

Afterwards every target is read back with ``MlflowClient``: N runs, each FINISHED, with its
params and tags, all 100 points of each metric (step, value, timestamp) and the two figures of the
right size under ``figures/``; any problem is printed and the exit status is 1. Times are
reported, never asserted.

    python -m benchmarks.push              # 1,000 runs
    python -m benchmarks.push --quick      # 20 runs (CI)
    python -m benchmarks.push --runs 200
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._common import (
    PYTHON,
    REPO,
    environment,
    format_table,
    isolated_env,
    load_average,
    ratio,
    write_results,
)

NAME = "push"
RUNS, QUICK_RUNS = 1000, 20
EXPERIMENT = "push-bench"
METRICS, STEPS = ("train_loss", "val_loss", "val_auc"), 100
FIGURES = ("loss.png", "roc.png")
BOUND = 2.0  # push may take at most this many times the hand-written time
WAYS = ("MLflow by hand", "nbtrack push (CLI)", "nbtrack push (in-process)")
TIMEOUT_S = 3600
BASE_MS = 1_700_000_000_000  # fixed timestamps, so source and hand-written runs are equal


@dataclass(frozen=True)
class Content:
    """What one run records; the source's run and the hand-written one both log exactly this."""

    name: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, list[tuple[int, float, int]]]  # key -> (step, value, timestamp ms)
    start_ms: int
    end_ms: int


def content(i: int) -> Content:
    """Run ``i``'s content: a showcase-notebook-like training run with a 100-epoch series."""
    start = BASE_MS + i * 60_000
    c = [0.01, 0.1, 1.0, 10.0][i % 4]
    params = {"seed": "42", "test_size": "0.25", "max_iter": "2000", "n_estimators": "200",
              "epochs": str(STEPS), "C": str(c), "model": ["logreg", "random-forest", "xgboost",
                                                           "sgd"][i % 4],
              "max_depth": str(3 + i % 5), "eta": str(round(0.05 * (1 + i % 3), 2)),
              "solver": "lbfgs"}
    tags = {"dataset": "breast_cancer", "stage": "exploration", "notebook": "train_v2_final.ipynb"}
    metrics = {}
    for k, key in enumerate(METRICS):
        series = []
        for step in range(STEPS):
            decay = 1.0 / (1.0 + step * (0.05 + 0.001 * (i % 11)))
            value = (0.99 - 0.3 * decay) if key == "val_auc" else (0.7 * decay + 0.01 * k)
            series.append((step, round(value, 6), start + 1000 + step * 100 + k))
        metrics[key] = series
    return Content(f"run-{i:04d}", params, tags, metrics, start, start + 1000 + STEPS * 100 + 500)


def draw_figures(folder: Path) -> dict[str, Path]:
    """The two figures, drawn once with Agg and saved as the PNG files every run logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    steps = list(range(STEPS))
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(steps, [0.7 / (1 + s * 0.05) for s in steps], label="train_loss")
    ax.plot(steps, [0.72 / (1 + s * 0.045) for s in steps], label="val_loss")
    ax.set_xlabel("epoch")
    ax.legend()
    paths["loss.png"] = folder / "loss.png"
    fig.savefig(paths["loss.png"], dpi=80)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 4))
    fpr = [x / 50 for x in range(51)]
    ax.plot(fpr, [min(1.0, x ** 0.25) for x in fpr], label="ROC (AUC 0.97)")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend()
    paths["roc.png"] = folder / "roc.png"
    fig.savefig(paths["roc.png"], dpi=80)
    plt.close(fig)
    return paths


def new_store(folder: Path, name: str) -> tuple[str, str]:
    """A new SQLite store with the experiment made (artifacts in ``folder``): (uri, experiment id)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder / (name + '.db')}"
    experiment_id = MlflowClient(tracking_uri=uri).create_experiment(
        EXPERIMENT, artifact_location=(folder / f"{name}-artifacts").as_uri())
    return uri, experiment_id


def log_by_hand(uri: str, experiment_id: str, n: int, figures: dict[str, Path]) -> None:
    """Log runs 0..n-1 with MLflow's client, as a user logging the content by hand would."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=uri)
    for i in range(n):
        run = content(i)
        created = client.create_run(experiment_id, start_time=run.start_ms, tags=run.tags,
                                    run_name=run.name)
        run_id = created.info.run_id
        client.log_batch(
            run_id, params=[Param(k, v) for k, v in run.params.items()],
            metrics=[Metric(key, value, ts, step) for key, series in run.metrics.items()
                     for step, value, ts in series],
            tags=[RunTag(k, v) for k, v in run.tags.items()])
        for path in figures.values():
            client.log_artifact(run_id, str(path), artifact_path="figures")
        client.set_terminated(run_id, status="FINISHED", end_time=run.end_ms)


def push_cli(source: str, target: str, folder: Path) -> dict:
    """``nbtrack push`` as a command: its wall time, or the problem."""
    env = isolated_env(folder, MLFLOW_TRACKING_URI=source)
    command = [PYTHON, "-m", "nbtrack", "push", "-e", EXPERIMENT, "--to", target, "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"problems": [f"nbtrack push exited {done.returncode}: "
                             f"{(done.stderr or done.stdout).strip()[-1200:]}"]}
    return {"seconds": seconds, "summary": done.stdout.strip().splitlines()[-1]}


def push_in_process(source: str, target: str) -> dict:
    """select_runs + Pusher + push_runs in this process: their wall time, or the problems."""
    from nbtrack.store import publish

    start = time.perf_counter()
    runs = publish.select_runs(source, experiment=EXPERIMENT)
    selected = time.perf_counter()
    outcomes = publish.push_runs(publish.Pusher(source, target), runs)
    seconds = time.perf_counter() - start
    bad = [o for o in outcomes if o.state != publish.PUSHED]
    if bad:
        return {"problems": [f"run {o.name}: {o.state} {o.detail}".strip() for o in bad[:10]]}
    return {"seconds": seconds, "select_seconds": selected - start}


def _all_runs(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def verify(uri: str, n: int, sizes: dict[str, int]) -> list[str]:
    """Problems with the runs in ``uri``: n FINISHED runs, each with its content whole."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return [f"no experiment {EXPERIMENT!r}"]
    runs = _all_runs(client, experiment.experiment_id)
    problems = [] if len(runs) == n else [f"{len(runs)} runs, not {n}"]
    expected = {run.name: run for run in map(content, range(n))}
    seen = set()
    for run in runs:
        name = run.info.run_name
        want = expected.get(name)
        if want is None or name in seen:
            problems.append(f"unexpected or repeated run {name!r} ({run.info.run_id})")
            continue
        seen.add(name)
        where = f"{name} ({run.info.run_id})"
        if run.info.status != "FINISHED":
            problems.append(f"{where}: status {run.info.status}")
        if run.data.params != want.params:
            problems.append(f"{where}: params {run.data.params}")
        missing = {k: v for k, v in want.tags.items() if run.data.tags.get(k) != v}
        if missing:
            problems.append(f"{where}: tags missing or different {missing}")
        for key, series in want.metrics.items():
            history = sorted((m.step, m.value, m.timestamp)
                             for m in client.get_metric_history(run.info.run_id, key))
            if history != series:
                problems.append(f"{where}: metric {key} has {len(history)} points, "
                                f"not the {len(series)} logged")
        files = {f.path: f.file_size for f in client.list_artifacts(run.info.run_id, "figures")}
        want_files = {f"figures/{name}": size for name, size in sizes.items()}
        if files != want_files:
            problems.append(f"{where}: artifacts under figures/ {files}, not {want_files}")
        if len(problems) > 20:
            return [*problems, "(stopped checking after 20 problems)"]
    return problems


def run(n: int) -> dict:
    started = time.perf_counter()
    rows, problems, loads = [], [], {}
    with tempfile.TemporaryDirectory(prefix="nbtrack-bench-push-") as temporary:
        folder = Path(temporary)
        figures = draw_figures(folder)
        sizes = {name: path.stat().st_size for name, path in figures.items()}

        source, source_experiment = new_store(folder, "source")
        fill_start = time.perf_counter()
        log_by_hand(source, source_experiment, n, figures)
        fill_seconds = time.perf_counter() - fill_start
        print(f"  source filled: {n} runs in {fill_seconds:.1f} s (untimed as a baseline)",
              flush=True)
        source_problems = verify(source, n, sizes)
        if source_problems:
            return {"rows": [], "problems": [f"source: {p}" for p in source_problems],
                    "source_fill_seconds": fill_seconds, "load_average_1min": loads}

        targets = {}
        for way, file in zip(WAYS, ("target_hand", "target_push", "target_push_inprocess"),
                             strict=True):
            uri, experiment_id = new_store(folder, file)
            targets[way] = uri
            loads[way] = {"start": load_average()}
            if way == "MLflow by hand":
                start = time.perf_counter()
                log_by_hand(uri, experiment_id, n, figures)
                result = {"seconds": time.perf_counter() - start}
            elif way == "nbtrack push (CLI)":
                result = push_cli(source, uri, folder)
            else:
                result = push_in_process(source, uri)
            loads[way]["end"] = load_average()
            row = {"way": way, "runs": n, "target": file + ".db", **result}
            if "seconds" in row:
                row["runs_per_second"] = n / row["seconds"]
                print(f"  {way:<27} {row['seconds']:8.1f} s  "
                      f"({time.perf_counter() - started:.0f} s so far)", flush=True)
            else:
                print(f"  {way:<27} FAILED", flush=True)
            rows.append(row)

        for way, uri in targets.items():
            row = next(r for r in rows if r["way"] == way)
            found = row.pop("problems", None) or verify(uri, n, sizes)
            if found:
                row["problems"] = found
                problems += [f"{way}: {p}" for p in found]
        hand = rows[0].get("seconds")
        for row in rows:
            if hand and "seconds" in row and "problems" not in row:
                row["ratio_to_hand"] = row["seconds"] / hand
    return {"rows": rows, "problems": problems, "source_fill_seconds": fill_seconds,
            "load_average_1min": loads, "total_seconds": time.perf_counter() - started}


def bound(results: dict) -> dict:
    """Whether push (the command, and in-process) stayed within BOUND x the hand-written time."""
    rows = {row["way"]: row for row in results["rows"]}
    found = {"bound": BOUND}
    for way, key in (("nbtrack push (CLI)", "cli"), ("nbtrack push (in-process)", "in_process")):
        value = rows.get(way, {}).get("ratio_to_hand")
        found[key] = None if value is None else value <= BOUND
    found["met"] = found["cli"]  # the command a user runs is what the target is about
    return found


def report(results: dict) -> str:
    table = []
    for row in results["rows"]:
        if "seconds" in row and "problems" not in row:
            table.append([row["way"], str(row["runs"]), f"{row['seconds']:.1f}",
                          f"{row['runs_per_second']:.1f}", ratio(row.get("ratio_to_hand"))])
        else:
            table.append([row["way"], str(row["runs"]), "failed", "-", "-"])
    met = results["bound"]
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    lines = ["", f"Push vs MLflow by hand: {results['runs']:,} runs of 10 params, 3 metrics x "
             f"{STEPS} steps, 2 figures (order: {', '.join(WAYS)})", "",
             format_table(["way", "runs", "seconds", "runs/s", "time / by hand"], table), "",
             f"target push <= {BOUND:g}x by hand: {verdict[met['met']]} (CLI), "
             f"{verdict[met['in_process']]} (in-process)"]
    verification = results["verification"]
    lines.append(f"verification: OK, {verification['runs_checked']:,} runs read back from "
                 f"{verification['stores_checked']} targets"
                 if verification["ok"] else "verification FAILED:\n" +
                 "\n".join(f"  - {p}" for p in verification["problems"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.push",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs, for CI")
    parser.add_argument("--runs", type=int, help=f"runs to push (default {RUNS:,})")
    args = parser.parse_args(argv)
    n = args.runs or (QUICK_RUNS if args.quick else RUNS)
    results = {"benchmark": NAME, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "quick": args.quick, "runs": n, "order": list(WAYS), "environment": environment()}
    load_start = load_average()
    results.update(run(n))
    results["load_average_1min"] = {"start": load_start, "end": load_average(),
                                    "by_way": results["load_average_1min"]}
    results["bound"] = bound(results)
    checked = [r for r in results["rows"] if "seconds" in r and "problems" not in r]
    results["verification"] = {"ok": not results["problems"] and len(checked) == len(WAYS),
                               "problems": results.pop("problems"),
                               "stores_checked": len(checked), "runs_checked": n * len(checked)}
    print(report(results))
    write_results(NAME, results)
    return 0 if results["verification"]["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("MPLBACKEND", "Agg")
    raise SystemExit(main())
