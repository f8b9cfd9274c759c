"""Build ``docs/benchmarks.md`` and its plots from the benchmarks' JSON results.

Reads ``<results>/<name>.json`` for every benchmark that wrote one, prints a summary of the
headline figures and ratios, and writes ``<docs>/benchmarks.md`` with a table and a matplotlib
plot (``<docs>/benchmarks/<name>.png``) per benchmark, a paragraph reading the results, and
where each target of issues 4 and 6 stands (met, or the measured gap).

    python -m benchmarks.report [--note "measured on a shared 2-core machine"]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._common import REPO, docs_dir, format_table, ms, rate, ratio, results_dir

NOTE_ENV = "NBTRACK_BENCH_NOTE"
ORDER = ("load_ext", "cell_overhead", "metric_throughput", "board_scale", "sweep", "push")
REFERENCE_CELL = "reference-10p-5m-1f"
REFERENCE_UNDISPLAYED = REFERENCE_CELL + "-undisplayed"
LATENCY_TARGET_S = 0.010
THROUGHPUT_TARGET = 100_000
BOARD_SIZE, BOARD_TARGET_S = 10_000, 1.0
BOARD_LARGE = 100_000  # issue 16.4: the warm first page at this many runs
PUSH_RUNS, PUSH_BOUND = 1000, 2.0


def load(folder: Path) -> dict[str, dict]:
    found = {}
    for name in ORDER:
        path = folder / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text(encoding="utf-8"))
    return found


# -- headline figures -----------------------------------------------------------------------------


def reference_cell(results: dict, name: str = REFERENCE_CELL) -> dict | None:
    cells = results.get("cell_overhead", {}).get("cells", [])
    return next((row for row in cells if row["cell"] == name), None)


def back_to_back(results: dict, name: str) -> dict | None:
    rows = results.get("cell_overhead", {}).get("back_to_back", [])
    return next((row for row in rows if row["cell"] == name), None)


def nbtrack_throughput(results: dict) -> list[dict]:
    rows = results.get("metric_throughput", {}).get("rows", [])
    return [row for row in rows if row["method"] == "nbtrack" and "caller_rate" in row]


def _fastest_mlflow(rows: list[dict], points: int, key: str) -> tuple[str, float] | None:
    mlflow = [(row["method"], row[key]) for row in rows if row["points"] == points and key in row
              and row["method"] in ("mlflow.log_metric", "log_batch", "mlflow async")]
    return max(mlflow, key=lambda item: item[1]) if mlflow else None


def targets(results: dict) -> list[tuple[str, str, str]]:
    """(target, status, detail) for each target of issues 6 and 4 the benchmarks measure."""
    found = []
    for cell, shown in ((REFERENCE_CELL, "figure displayed inline, as in Jupyter"),
                        (REFERENCE_UNDISPLAYED, "figure never displayed (Agg)")):
        row = reference_cell(results, cell)
        name = ("issue 6.1: added latency of a cell with 10 params, 5 metrics, 1 figure < 10 ms "
                f"median; {shown}")
        if row is None:
            found.append((name, "not measured", f"no cell_overhead results for {cell}"))
            continue
        added = row["added_tracked_s"]
        hand = row["added_hand_s"]
        status = "met" if added < LATENCY_TARGET_S else "NOT met"
        detail = (f"+{ms(added)} ms median (tracked {ms(row['variants']['tracked']['median_s'])}, "
                  f"p95 {ms(row['variants']['tracked']['p95_s'])}; untracked "
                  f"{ms(row['variants']['untracked']['median_s'])}); hand-written MLflow adds "
                  f"+{ms(hand)} ms")
        if added >= LATENCY_TARGET_S:
            detail += f"; gap {ms(added - LATENCY_TARGET_S)} ms ({added / LATENCY_TARGET_S:.1f}x the target)"
        rows = back_to_back(results, cell)
        if rows:
            detail += (f". Run back to back until the store has every run: +{ms(rows['added_tracked_s'])}"
                       f" ms a cell, hand-written +{ms(rows['added_hand_s'])} ms")
        found.append((name, status, detail))

    rows = nbtrack_throughput(results)
    name = "issue 6.2: nbtrack.log_metric accepts >= 100,000 points/s"
    if not rows:
        found.append((name, "not measured", "no metric_throughput results for nbtrack"))
    else:
        worst = min(rows, key=lambda r: r["caller_rate"])
        largest = max(rows, key=lambda r: r["points"])
        status = "met" if worst["caller_rate"] >= THROUGHPUT_TARGET else "NOT met"
        detail = (f"caller sees {rate(worst['caller_rate'])} points/s at worst ({worst['points']:,} "
                  f"points); at {largest['points']:,} points {rate(largest['caller_rate'])}/s to the "
                  f"caller and {rate(largest['store_rate'])}/s into the store "
                  f"(until {largest.get('store_until', 'the store has them')})")
        if worst["caller_rate"] < THROUGHPUT_TARGET:
            detail += f"; gap {THROUGHPUT_TARGET / worst['caller_rate']:.1f}x"
        found.append((name, status, detail))

    found.append(_live_panel_target(results.get("metric_throughput", {}).get("live_panel")))

    name = (f"issue 4.9: board first page and re-rank/filter < 1 s at {BOARD_SIZE:,} runs "
            "(SQLite store)")
    board = results.get("board_scale")
    if board is None:
        found.append((name, "not measured", "benchmarks/board_scale.py has not written results "
                      "(being written separately)"))
    else:
        rows = [r for r in board.get("rows", []) if r.get("size") == BOARD_SIZE
                and "nbtrack" in str(r.get("tool", "")).lower() and r.get("seconds") is not None
                and r.get("operation") in ("first page, cold", "first page, warm", "re-rank",
                                           "filter")]
        if not rows:
            found.append((name, "not measured", f"board_scale results have no nbtrack rows at "
                          f"{BOARD_SIZE:,} runs"))
        else:
            # The first look ever at an experiment builds its index by reading every run once,
            # as search_runs does; the target is met or not on the looks after that, and the
            # one-time cost is stated next to it rather than hidden.
            cold = [r for r in rows if "cold" in str(r["operation"])]
            warm = [r for r in rows if r not in cold]
            slow = [r for r in warm if r["seconds"] >= BOARD_TARGET_S]
            detail = "; ".join(f"{r['operation']} {r['seconds']:.2f} s" for r in warm)
            status = "met" if warm and not slow else "NOT met"
            if cold:
                detail += (f"; the first look before the index exists reads every run once: "
                           f"{cold[0]['seconds']:.2f} s (NOT under 1 s)")
                status += " once the index exists"
            found.append((name, status, detail))

    if board is not None:
        found.append(_first_look_target(board))

    name = (f"issue 18.7: nbtrack push of {PUSH_RUNS:,} runs (params, 100-step series, 2 figures) "
            f"<= {PUSH_BOUND:g}x MLflow logging the same by hand")
    rows = {row["way"]: row for row in results.get("push", {}).get("rows", [])}
    cli, hand = rows.get("nbtrack push (CLI)", {}), rows.get("MLflow by hand", {})
    if cli.get("ratio_to_hand") is None:
        found.append((name, "not measured", "no push results with both times verified"))
    else:
        inside = rows.get("nbtrack push (in-process)", {})
        status = "met" if cli["ratio_to_hand"] <= PUSH_BOUND else "NOT met"
        detail = (f"{cli['runs']:,} runs: `nbtrack push` {cli['seconds']:.1f} s, by hand "
                  f"{hand['seconds']:.1f} s ({ratio(cli['ratio_to_hand'])})")
        if inside.get("ratio_to_hand") is not None:
            detail += (f"; in-process, without the process start, {inside['seconds']:.1f} s "
                       f"({ratio(inside['ratio_to_hand'])})")
        if cli["runs"] != PUSH_RUNS:
            detail += f"; measured at {cli['runs']:,} runs, not {PUSH_RUNS:,}"
        found.append((name, status, detail))
    return found


def summary(results: dict) -> list[list[str]]:
    """The printed table: one headline figure per line, with its ratio to the baseline."""
    lines = []
    load_ext = results.get("load_ext")
    if load_ext and "%load_ext nbtrack" in load_ext.get("steps", {}):
        steps = load_ext["steps"]
        lines.append(["%load_ext nbtrack (median)", f"{ms(steps['%load_ext nbtrack']['median_s'])} ms",
                      f"import mlflow {ms(steps['import mlflow']['median_s'])} ms",
                      ratio(load_ext.get("ratio_load_ext_to_import_mlflow"))])
        if "first_record_s" in load_ext:
            first = load_ext["first_record_s"]
            lines.append(["to the first record, new store", f"{ms(first['nbtrack'])} ms",
                          f"MLflow by hand {ms(first['mlflow'])} ms",
                          ratio(first["nbtrack"] / first["mlflow"])])
    cells = results.get("cell_overhead", {}).get("cells", [])
    for row in cells:
        if row["cell"] == REFERENCE_CELL or row["cell"].startswith("the notebook"):
            label = ("reference cell, added latency" if row["cell"] == REFERENCE_CELL
                     else "showcase notebook cells, added")
            added = (row["added_tracked_s"] / row["added_hand_s"] if row["added_hand_s"] > 0 else None)
            lines.append([label, f"+{ms(row['added_tracked_s'])} ms",
                          f"hand-written +{ms(row['added_hand_s'])} ms", ratio(added)])
    throughput = results.get("metric_throughput", {}).get("rows", [])
    for row in nbtrack_throughput(results):
        best = _fastest_mlflow(throughput, row["points"], "store_rate")
        lines.append([f"log_metric {row['points']:,} points, caller", f"{rate(row['caller_rate'])}/s",
                      f"best MLflow {best[0]} {rate(best[1])}/s" if best else "-",
                      ratio(row["caller_rate"] / best[1]) if best else "n/a"])
        lines.append([f"log_metric {row['points']:,} points, store", f"{rate(row['store_rate'])}/s",
                      f"best MLflow {best[0]} {rate(best[1])}/s" if best else "-",
                      ratio(row["store_rate"] / best[1]) if best else "n/a"])
    sweep = results.get("sweep", {}).get("rows", [])
    for row in sweep:
        if row["way"].startswith("nbtrack") and "seconds" in row:
            others = [r for r in sweep if r["executions"] == row["executions"]
                      and not r["way"].startswith("nbtrack") and "seconds" in r]
            fastest = min(others, key=lambda r: r["seconds"]) if others else None
            lines.append([f"sweep of {row['executions']} executions", f"{row['seconds']:.1f} s",
                          f"{fastest['way']} {fastest['seconds']:.1f} s" if fastest else "-",
                          ratio(row["seconds"] / fastest["seconds"]) if fastest else "n/a"])
    push = {row["way"]: row for row in results.get("push", {}).get("rows", [])}
    hand = push.get("MLflow by hand", {})
    for way in ("nbtrack push (CLI)", "nbtrack push (in-process)"):
        row = push.get(way, {})
        if row.get("ratio_to_hand") is not None:
            lines.append([f"{way[8:]} of {row['runs']:,} runs", f"{row['seconds']:.1f} s",
                          f"MLflow by hand {hand['seconds']:.1f} s", ratio(row["ratio_to_hand"])])
    for row in results.get("board_scale", {}).get("rows", []):
        if row.get("seconds") is not None:
            lines.append([f"board {row.get('operation')} at {row.get('size'):,} runs ({row.get('tool')})",
                          f"{row['seconds']:.2f} s", "", ""])
    return lines


def _live_panel_target(live: dict | None) -> tuple[str, str, str]:
    """Issue 16.1: log_metric's rate to the caller with the live panel showing."""
    name = "issue 16.1: nbtrack.log_metric >= 400,000 points/s to the caller with the live panel showing"
    measured = [row for row in (live or {}).get("rows", []) if "ratio" in row]
    if not measured:
        return name, "not measured", "no live panel rows in the metric_throughput results"
    worst = min(measured, key=lambda row: row["panel_rate"])
    detail = "; ".join(f"{row['points']:,} points: {rate(row['panel_rate'])}/s showing, "
                       f"{rate(row['no_panel_rate'])}/s off ({row['ratio']:.2f}x), draws "
                       f"{', '.join(map(str, row['draws']))}" for row in measured)
    return name, "met" if worst["panel_rate"] >= live["target"] else "NOT met", detail


def _first_look_target(board: dict) -> tuple[str, str, str]:
    """Issue 16.4: the board's first look in a new process, each part under 1 s."""
    name = (f"issue 16.4: board first look < 1 s: at {BOARD_SIZE:,} runs on a store nbtrack "
            f"wrote, and on one it never saw (first page); warm first page at "
            f"{BOARD_LARGE:,} runs; the look right after a sweep")
    wanted = {(BOARD_SIZE, "first look, index the recorder filled"),
              (BOARD_SIZE, "first look, store never indexed: first page"),
              (BOARD_LARGE, "first page, warm")}
    rows = {(r.get("size"), r.get("operation")): r for r in board.get("rows", [])
            if "nbtrack" in str(r.get("tool", "")).lower() and r.get("seconds") is not None}
    missing = [f"{operation} at {size:,}" for size, operation in sorted(wanted) if
               (size, operation) not in rows]
    shown = [rows[key] for key in sorted(wanted) if key in rows]
    after = [r for key, r in rows.items() if key[1].startswith("look after a sweep")]
    detail = "; ".join([f"{r['operation']} at {r['size']:,} runs {r['seconds']:.2f} s"
                        for r in shown] + [f"{r['operation']} at {r['size']:,} runs "
                                           f"{r['seconds']:.2f} s ({r.get('note', '')})"
                                           for r in after])
    if missing:
        return name, "not measured", f"no results for {', '.join(missing)}; {detail}"
    slow = [r for r in shown if r["seconds"] >= BOARD_TARGET_S]
    return name, "met" if not slow else "NOT met", detail


# -- the plots ------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_load_ext(data: dict, path: Path) -> None:
    plt = _pyplot()
    steps = data["steps"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(steps)
    for i, name in enumerate(names):
        samples = [s * 1000 for s in steps[name]["samples_s"]]
        ax.barh(i, steps[name]["median_s"] * 1000, color="#9ecae1")
        ax.plot(samples, [i] * len(samples), "k.", alpha=0.6)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("ms (bar: median; dots: each fresh process)")
    ax.set_title("Loading nbtrack vs importing MLflow")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cell_overhead(data: dict, path: Path) -> None:
    plt = _pyplot()
    rows = [row for row in data["cells"] if not row["cell"].startswith("the notebook")]
    fig, ax = plt.subplots(figsize=(7, 4))
    work = [max(row["variants"]["untracked"]["median_s"] * 1000, 0.1) for row in rows]
    for key, label, marker in (("added_tracked_s", "%%track", "o"), ("added_hand_s", "MLflow by hand", "s")):
        ax.scatter(work, [max(row[key] * 1000, 0.1) for row in rows], label=label, marker=marker)
    for x, row in zip(work, rows, strict=True):
        ax.annotate(row["cell"], (x, max(row["added_tracked_s"] * 1000, 0.1)), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.axhline(LATENCY_TARGET_S * 1000, color="grey", linestyle="--", linewidth=1,
               label="issue 6 target (10 ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("the cell's own work: untracked median, ms")
    ax.set_ylabel("added latency (median), ms")
    ax.set_title("Latency a cell gains from tracking, by how much work it does")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metric_throughput(data: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    methods = list(dict.fromkeys(row["method"] for row in data["rows"]))
    for ax, key, title in ((axes[0], "caller_rate", "rate the caller sees"),
                           (axes[1], "store_rate", "rate points reach the store")):
        for method in methods:
            rows = [r for r in data["rows"] if r["method"] == method and key in r]
            if rows:
                ax.plot([r["points"] for r in rows], [r[key] for r in rows], "o-", label=method)
        ax.axhline(THROUGHPUT_TARGET, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("points logged")
        ax.set_title(title)
    axes[0].set_ylabel("points per second")
    axes[0].legend(fontsize=8)
    fig.suptitle("Step-metric throughput (dashed: issue 6 target, 100,000 points/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(data: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for way in dict.fromkeys(row["way"] for row in data["rows"]):
        rows = [r for r in data["rows"] if r["way"] == way and "seconds" in r]
        ax.plot([r["executions"] for r in rows], [r["seconds"] for r in rows], "o-", label=way)
    ax.set_xlabel("executions of the notebook")
    ax.set_ylabel("wall time, s")
    ax.set_title("Sweep throughput")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_board_scale(data: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [r for r in data.get("rows", []) if r.get("seconds") is not None]
    for series in dict.fromkeys((r.get("tool"), r.get("operation")) for r in rows):
        points = sorted((r["size"], r["seconds"]) for r in rows
                        if (r.get("tool"), r.get("operation")) == series)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{series[0]}: {series[1]}")
    ax.axhline(BOARD_TARGET_S, color="grey", linestyle="--", linewidth=1, label="issue 4 target (1 s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("runs in the experiment")
    ax.set_ylabel("seconds")
    ax.set_title("Leaderboard vs mlflow.search_runs as the experiment grows")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_push(data: dict, path: Path) -> None:
    plt = _pyplot()
    rows = [r for r in data["rows"] if "seconds" in r]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.barh(range(len(rows)), [r["seconds"] for r in rows], color="#9ecae1")
    ax.set_yticks(range(len(rows)), [r["way"] for r in rows])
    hand = next((r["seconds"] for r in rows if r["way"] == "MLflow by hand"), None)
    if hand:
        ax.axvline(PUSH_BOUND * hand, color="grey", linestyle="--", linewidth=1,
                   label=f"{PUSH_BOUND:g}x by hand (issue 18 target)")
        ax.legend(fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("wall time, s")
    ax.set_title(f"{data['runs']:,} runs into a new SQLite store")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS = {"load_ext": plot_load_ext, "cell_overhead": plot_cell_overhead,
         "metric_throughput": plot_metric_throughput, "sweep": plot_sweep,
         "board_scale": plot_board_scale, "push": plot_push}


# -- the page -------------------------------------------------------------------------------------


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _section_load_ext(data: dict) -> str:
    rows = [[step, ms(v["median_s"]), ms(v["p95_s"]), str(len(v["samples_s"]))]
            for step, v in data["steps"].items()]
    text = ("Fresh Python processes, each with a new SQLite store. `%load_ext nbtrack` is timed in a "
            "fresh IPython shell (IPython already imported, as in a kernel); the first `%%track` "
            "cell follows in the same process, so MLflow's import and the store's creation land "
            "there. The hand-written side is `import mlflow` and a first `start_run` logging the "
            "same param and metric.")
    extra = ""
    if "first_record_s" in data:
        first = data["first_record_s"]
        extra = (f"\n\nTo the first record in a new store: nbtrack {ms(first['nbtrack'])} ms "
                 f"(load_ext + first cell), MLflow by hand {ms(first['mlflow'])} ms. "
                 f"MLflow imported by `%load_ext nbtrack`: {data.get('mlflow_imported_by_load_ext')}.")
    return _md_table(["step", "median ms", "p95 ms", "processes"], rows) + "\n\n" + text + extra


def _section_cell_overhead(data: dict) -> str:
    rows = []
    for row in data["cells"]:
        v = row["variants"]
        rows.append([row["cell"], ms(v["untracked"]["median_s"]), ms(v["tracked"]["median_s"]),
                     ms(v["tracked"]["p95_s"]), ms(v["hand"]["median_s"]), ms(v["hand"]["p95_s"]),
                     "+" + ms(row["added_tracked_s"]), "+" + ms(row["added_hand_s"]),
                     ratio(row["ratio_tracked_hand"])])
    text = (f"Median and p95 of {data['repeats']} repeat(s) after a warm-up, in ms, in one in-process "
            "IPython shell on a fresh SQLite store (the reference cell runs several times per "
            "repeat). *untracked* is the cell without `%%track`; *hand* is the same content logged "
            "with MLflow's fluent API (params, metrics, series, figures, models, datasets), written "
            "out in `benchmarks/cell_overhead.py`. `reference-10p-5m-1f` is issue 6's cell: 10 "
            "params, 5 metrics, 1 figure and next to no work of its own. Figures are displayed "
            "as Jupyter displays them (matplotlib-inline draws each to PNG, in every variant; "
            "nbtrack logs that PNG, the hand-written cell draws it again for `log_figure`); "
            "`reference-10p-5m-1f-undisplayed` is the same cell with the Agg backend, which "
            "displays nothing, so only the logger draws the figure (nbtrack on its background "
            "writer, from a copy taken when the cell ends). nbtrack's background writer is "
            "drained, untimed, before each execution: one cell's writing does not land in the "
            "next cell's time.")
    b2b = data.get("back_to_back") or []
    if b2b:
        text += ("\n\nWhat that pause hides: the reference cells run "
                 f"{data['back_to_back_blocks'][0]['cells']} times in a row, timed until the store "
                 "has every run (`nbtrack.flush()` included), ms per cell:\n\n" + _md_table(
                     ["cell, back to back", "untracked", "tracked", "hand", "+tracked", "+hand"],
                     [[row["cell"], *(ms(row["variants"][v]["per_cell_s"])
                                      for v in ("untracked", "tracked", "hand")),
                       "+" + ms(row["added_tracked_s"]), "+" + ms(row["added_hand_s"])]
                      for row in b2b]))
    frameworks = (data.get("frameworks") or {}).get("cells") or []
    if frameworks:
        text += ("\n\nFramework cells (`benchmarks/_framework_cells.py`): an XGBoost and a PyTorch "
                 "cell, untracked, under `%%track`, logged by hand with `mlflow.<flavor>.log_model`, "
                 "and under `mlflow.<flavor>.autolog()` (n/a where autolog records nothing), ms:\n\n"
                 + _md_table(["framework cell", "untracked", "tracked", "hand", "autolog",
                              "+tracked", "+hand", "+autolog", "tracked/hand"],
                             [[row["cell"], *(ms(row["variants"][k]["median_s"])
                                              if row["variants"].get(k) else "n/a"
                                              for k in ("untracked", "tracked", "hand", "autolog")),
                               *(("+" + ms(row["added_s"][k])) if row["added_s"].get(k) is not None
                                 else "n/a" for k in ("tracked", "hand", "autolog")),
                               ratio(row["ratio_tracked_hand"])] for row in frameworks]))
        notes = {row.get("autolog_note") for row in frameworks if row.get("autolog_note")}
        text += "".join(f"\n\n{note}" for note in sorted(notes))
    in_store = data.get("in_store") or []
    if in_store:
        text += ("\n\nTime until a model cell's run is in the store (FINISHED, its models READY): "
                 "tracked, from the cell's start until the background writer has written it; by "
                 "hand, when the cell returns. ms:\n\n"
                 + _md_table(["model cell", "tracked returns", "tracked in store", "hand",
                              "in store/hand"],
                             [[row["cell"], ms(row["tracked_returns"]["median_s"]),
                               ms(row["tracked_in_store"]["median_s"]), ms(row["hand"]["median_s"]),
                               ratio(row["ratio_in_store_hand"])] for row in in_store]))
    verification = data["verification"]
    check = (f"Verified: {verification['runs_checked']} runs read back with the expected content."
             if verification["ok"] else "Verification FAILED: " + "; ".join(verification["problems"][:5]))
    return (_md_table(["cell", "untracked", "tracked", "p95", "hand", "p95", "+tracked", "+hand",
                       "tracked/hand"], rows) + "\n\n" + text + "\n\n" + check)


def _section_metric_throughput(data: dict) -> str:
    rows = []
    for row in data["rows"]:
        if "caller_rate" in row:
            rows.append([row["method"], f"{row['points']:,}", rate(row["caller_rate"]),
                         rate(row["store_rate"]), f"{row['store_s']:,.2f}"])
        else:
            rows.append([row["method"], f"{row['points']:,}", "-", "-",
                         row.get("skipped") or "failed: " + "; ".join(row.get("problems", []))[:120]])
    until = next((r["store_until"] for r in data["rows"] if "store_until" in r), None)
    text = ("One fresh process per method and size; the series `loss = 0.5 * step` is read back "
            "point by point from the store before the time is kept. *caller*: points / time in the "
            "logging loop; *store*: points / time until the store has them (MLflow async: until "
            "`flush_async_logging()`; W&B offline and trackio: until `finish()`). `log_batch` sends "
            "1,000 points per call (MLflow's limit). A size whose projected time exceeds the "
            f"budget ({data.get('budget_s', 0):.0f} s per sample) is skipped, not extrapolated.")
    if until:
        text += f" nbtrack's store time runs until: {until}."
    return _md_table(["method", "points", "caller points/s", "store points/s", "store s / note"],
                     rows) + "\n\n" + text


def _section_sweep(data: dict) -> str:
    rows = [[r["way"], str(r["executions"]), f"{r['seconds']:.1f}" if "seconds" in r else "failed",
             f"{r['executions_per_minute']:.1f}" if "seconds" in r else "-",
             ratio(r.get("ratio_to_nbtrack"))] for r in data["rows"]]
    text = ("A three-cell notebook (`%load_ext nbtrack`, a `parameters` cell `x = 0`, a `%%track` "
            "cell `y = x * 2.0`). Wall time of the whole command(s), process starts included; each "
            "way then has to show N finished runs with `x` = 0..N-1 and `y = 2x` in its store.")
    return _md_table(["way", "executions", "seconds", "per minute", "time / nbtrack run"], rows) + (
        "\n\n" + text)


def _section_board_scale(data: dict) -> str:
    rows = [[f"{r.get('size'):,}" if isinstance(r.get("size"), int) else str(r.get("size")),
             str(r.get("operation")), str(r.get("tool")),
             f"{r['seconds']:.3f}" if r.get("seconds") is not None else "-",
             str(r.get("memory", "-"))] for r in data.get("rows", [])]
    return _md_table(["runs", "operation", "tool", "seconds", "memory"], rows) + (
        "\n\nWritten by `benchmarks/board_scale.py`; see its docstring for the method.")


def _section_push(data: dict) -> str:
    rows = [[r["way"], f"{r['runs']:,}", f"{r['seconds']:.1f}" if "seconds" in r else "failed",
             f"{r['runs_per_second']:.1f}" if "seconds" in r else "-",
             ratio(r.get("ratio_to_hand"))] for r in data["rows"]]
    met = data.get("bound", {})
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    text = (f"N runs like the showcase notebook's (10 params, 3 metrics with a 100-step series "
            "each, 3 tags, 2 PNG figures) in a SQLite store, then, one after another, each into a "
            "new SQLite store: logged by hand with `MlflowClient` (`create_run`, one `log_batch`, "
            "`log_artifact` per figure, `set_terminated`), `nbtrack push -e ... --to sqlite:///...` "
            "as a command (process start included), and the same push in-process "
            "(`select_runs` + `Pusher`). Every target is then read back: N FINISHED runs with "
            "their params, tags, every metric point and both figures. Issue 18's bound, push <= "
            f"{met.get('bound', PUSH_BOUND):g}x by hand: **{verdict[met.get('cli')]}** for the "
            f"command, {verdict[met.get('in_process')]} in-process.")
    loads = data.get("load_average_1min", {})
    if loads.get("start") is not None:
        text += f" 1-minute load average {loads['start']:.1f} at the start, {loads['end']:.1f} at the end."
    return _md_table(["way", "runs", "seconds", "runs/s", "time / by hand"], rows) + "\n\n" + text


SECTIONS = {
    "load_ext": ("1. `%load_ext nbtrack` vs `import mlflow`", _section_load_ext),
    "cell_overhead": ("2. Cell latency added by `%%track` vs MLflow by hand", _section_cell_overhead),
    "metric_throughput": ("3. Step-metric throughput", _section_metric_throughput),
    "board_scale": ("4. Leaderboard at 1,000 / 10,000 / 100,000 runs", _section_board_scale),
    "sweep": ("5. Sweep throughput", _section_sweep),
    "push": ("6. `nbtrack push` vs logging the same runs by hand", _section_push),
}


def reading(results: dict) -> str:
    """A short paragraph reading the results, built from the numbers so it stays true."""
    parts = []
    load_ext = results.get("load_ext", {})
    steps = load_ext.get("steps", {})
    if "%load_ext nbtrack" in steps and "import mlflow" in steps:
        parts.append(
            f"Loading the extension costs {ms(steps['%load_ext nbtrack']['median_s'])} ms against "
            f"{ms(steps['import mlflow']['median_s'])} ms for `import mlflow`, because MLflow is "
            "imported only when the first tracked cell needs it"
            + (f"; to the first record in a new store the two are close "
               f"({ms(load_ext['first_record_s']['nbtrack'])} vs "
               f"{ms(load_ext['first_record_s']['mlflow'])} ms)" if "first_record_s" in load_ext else "")
            + ".")
    cells = results.get("cell_overhead", {}).get("cells", [])
    total = next((r for r in cells if r["cell"].startswith("the notebook")), None)
    ref = reference_cell(results)
    if total:
        parts.append(
            f"On the showcase notebook's cells, `%%track` adds {ms(total['added_tracked_s'])} ms in all "
            f"where logging the same content by hand adds {ms(total['added_hand_s'])} ms "
            f"({ratio(total['ratio_tracked_hand'])} the hand-written total time): most of the "
            "hand-written cost is MLflow's model logging.")
    if ref:
        undisplayed = reference_cell(results, REFERENCE_UNDISPLAYED)
        parts.append(
            f"On the small reference cell nbtrack adds {ms(ref['added_tracked_s'])} ms to the "
            f"cell and MLflow by hand {ms(ref['added_hand_s'])} ms"
            + (f" ({ms(undisplayed['added_tracked_s'])} and {ms(undisplayed['added_hand_s'])} ms "
               "when nothing displays the figure)" if undisplayed else "")
            + ": the cell returns once its record is in the journal.")
        b2b = back_to_back(results, REFERENCE_CELL)
        if b2b:
            parts.append(
                f"The store's work is not gone, only moved: run back to back until the store has "
                f"every run, the reference cell costs +{ms(b2b['added_tracked_s'])} ms a cell "
                f"tracked against +{ms(b2b['added_hand_s'])} ms by hand (nbtrack also writes the "
                "cell's source, history and notebook snapshot).")
    rows = nbtrack_throughput(results)
    if rows:
        largest = max(rows, key=lambda r: r["points"])
        best = _fastest_mlflow(results["metric_throughput"]["rows"], largest["points"], "store_rate")
        parts.append(
            f"`nbtrack.log_metric` only appends to memory while the cell runs "
            f"({rate(largest['caller_rate'])} points/s at {largest['points']:,} points); the points "
            f"reach the store at {rate(largest['store_rate'])} points/s"
            + (f", against {rate(best[1])} for the fastest MLflow way measured at that size ({best[0]})"
               if best else "") + ".")
    sweep = results.get("sweep", {}).get("rows", [])
    biggest = max((r["executions"] for r in sweep if "seconds" in r), default=None)
    if biggest:
        at = {r["way"]: r["seconds"] for r in sweep if r["executions"] == biggest and "seconds" in r}
        ours = next((s for w, s in at.items() if w.startswith("nbtrack")), None)
        others = {w: s for w, s in at.items() if not w.startswith("nbtrack")}
        if ours and others:
            fastest = min(others, key=others.get)
            parts.append(
                f"For {biggest} executions of a tiny notebook, `nbtrack run -j 2` took {ours:.1f} s "
                f"against {others[fastest]:.1f} s for {fastest}"
                + (": on this machine the parallel sweep was the slower. Each execution runs in a "
                   "process of its own (a Python start and papermill's import every time, where "
                   "papermill's loop pays them once), and two executions at once on 2 cores "
                   "share the same CPU time, which a kernel's start-up and imports use up."
                   if ours > others[fastest] else "."))
    return " ".join(parts)


def page(results: dict, note: str | None, plots: dict[str, str]) -> str:
    quick = any(data.get("quick") for data in results.values())
    env = next(iter(results.values()), {}).get("environment", {})
    loads = [data.get("load_average_1min", {}) for data in results.values()]
    load_values = [v for entry in loads for v in entry.values() if isinstance(v, (int, float))]
    git = env.get("git", {})
    lines = ["# Benchmarks", "",
             "Generated by `python -m benchmarks` (see `benchmarks/`); every number below was measured "
             "in the same run as its baseline, and every benchmark read its runs and values back "
             "from the store before keeping a time. Timings are never asserted in tests.", ""]
    if quick:
        lines += ["> **Quick run** (`--quick`): tiny sizes and a single repeat, to prove the suite "
                  "works. Do not read these numbers as results.", ""]
    machine = (f"Python {env.get('python')}, {env.get('cpu_count')} CPUs, {env.get('platform')}; "
               f"MLflow {env.get('versions', {}).get('mlflow')}, IPython "
               f"{env.get('versions', {}).get('ipython')}; nbtrack at commit "
               f"`{str(git.get('commit', '?'))[:10]}`"
               f"{' (working tree modified)' if git.get('dirty') else ''}; "
               f"generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.")
    if load_values:
        machine += (f" 1-minute load average during the runs: {min(load_values):.1f} to "
                    f"{max(load_values):.1f}.")
    lines += [f"**Machine.** {machine}", ""]
    if note:
        lines += [f"**Note.** {note}", ""]
    lines += ["## Targets", "", _md_table(["target", "status", "measured"],
                                          [list(t) for t in targets(results)]), ""]
    text = reading(results)
    if text:
        lines += ["## Reading the results", "", text, ""]
    lines += ["## Command", "", "```bash", "pip install -e '.[demo,test,bench]'   # bench: wandb, trackio",
              "python -m benchmarks            # everything, a few minutes to an hour",
              "python -m benchmarks --quick    # tiny sizes, 1 repeat (CI)",
              "python -m benchmarks.metric_throughput --sizes 1000,100000   # one benchmark", "```", ""]
    for name in ORDER:
        title, section = SECTIONS[name]
        lines += [f"## {title}", ""]
        if name not in results:
            lines += ["Not measured in this run" + (
                " (`benchmarks/board_scale.py` is being written separately)." if name == "board_scale"
                else "."), ""]
            continue
        lines += [section(results[name]), ""]
        if name in plots:
            lines += [f"![{title}]({plots[name]})", ""]
    return "\n".join(lines)


def build(results_folder: Path, docs_folder: Path, note: str | None) -> tuple[Path, list[Path]]:
    results = load(results_folder)
    plots_folder = docs_folder / "benchmarks"
    plots_folder.mkdir(parents=True, exist_ok=True)
    plots, written = {}, []
    for name, data in results.items():
        path = plots_folder / f"{name}.png"
        try:
            PLOTS[name](data, path)
        except (KeyError, TypeError, ValueError) as error:  # a result of an unexpected shape
            print(f"report: no plot for {name}: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        plots[name] = f"benchmarks/{name}.png"
        written.append(path)
    markdown = docs_folder / "benchmarks.md"
    markdown.write_text(page(results, note, plots), encoding="utf-8")
    return markdown, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    parser.add_argument("--note", default=os.environ.get(NOTE_ENV),
                        help="a sentence for the page, e.g. how busy the machine was")
    args = parser.parse_args(argv)
    results = load(results_dir())
    if not results:
        print(f"report: no results in {results_dir()}; run python -m benchmarks first.", file=sys.stderr)
        return 1
    print("\nSummary (nbtrack vs the baseline measured in the same run)\n")
    print(format_table(["figure", "nbtrack", "baseline", "ratio"], summary(results)))
    print("\nTargets")
    for name, status, detail in targets(results):
        print(f"  [{status}] {name}: {detail}")
    markdown, plots = build(results_dir(), docs_dir(), args.note)
    print(f"\nreport: {markdown} and {len(plots)} plots in {markdown.parent / 'benchmarks'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
