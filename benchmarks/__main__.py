"""``python -m benchmarks [--quick]`` runs every benchmark, then builds ``docs/benchmarks.md``.

Each benchmark is a module ``benchmarks/<name>.py`` with ``main(argv) -> int`` that prints its own
table and writes ``<results>/<name>.json``; each runs here in its own process (they change the
environment and hold IPython singletons), in the order below. Modules not in this checkout are
skipped with a line saying so. Afterwards :mod:`benchmarks.report` prints the summary and writes
the page and its plots from whatever results exist.

    python -m benchmarks                         # every benchmark, full sizes
    python -m benchmarks --quick                 # tiny sizes, 1 repeat: proves it works (CI)
    python -m benchmarks --only metric_throughput,sweep
    python -m benchmarks --results /tmp/r --docs /tmp/d   # keep docs/benchmarks.md untouched
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from benchmarks._common import DOCS_ENV, PYTHON, REPO, RESULTS_ENV, docs_dir, results_dir

# The order they run in; board_scale is written separately and joins when its file exists.
BENCHMARKS = ("load_ext", "cell_overhead", "metric_throughput", "board_scale", "sweep", "push")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1 repeat, for CI")
    parser.add_argument("--only", help="comma-separated benchmarks: " + ", ".join(BENCHMARKS))
    parser.add_argument("--results", help=f"folder for the JSON results (or ${RESULTS_ENV}; "
                        "default benchmarks/results)")
    parser.add_argument("--docs", help=f"folder for benchmarks.md and its plots (or ${DOCS_ENV}; "
                        "default docs)")
    parser.add_argument("--note", help="a sentence for the page, e.g. how busy the machine was")
    parser.add_argument("--no-report", action="store_true", help="run the benchmarks only")
    args = parser.parse_args(argv)
    names = BENCHMARKS if not args.only else tuple(n.strip() for n in args.only.split(","))
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}.")
    if args.results:
        os.environ[RESULTS_ENV] = os.path.abspath(args.results)
    if args.docs:
        os.environ[DOCS_ENV] = os.path.abspath(args.docs)

    failed = []
    for name in names:
        if not (REPO / "benchmarks" / f"{name}.py").exists():
            print(f"\n=== {name}: not in this checkout, skipped", flush=True)
            continue
        # A failed run must not leave an older result for the report to show as current.
        (results_dir() / f"{name}.json").unlink(missing_ok=True)
        print(f"\n=== {name}", flush=True)
        started = time.perf_counter()
        code = subprocess.run([PYTHON, "-m", f"benchmarks.{name}", *(["--quick"] if args.quick else [])],
                              cwd=REPO).returncode
        print(f"=== {name}: exit {code}, {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if not args.no_report:
        from benchmarks import report

        report.main(["--note", args.note] if args.note else [])
        print(f"results: {results_dir()}; page: {docs_dir() / 'benchmarks.md'}")
    if failed:
        print(f"benchmarks that failed or could not verify their work: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
