"""The live panel's throughput benchmark, quick: in a real kernel the panel draws while the loop
logs, its displays reach the client, and every point is read back from the store. Timings are
never asserted (``python -m benchmarks.metric_throughput`` measures them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_live_panel_benchmark_draws_in_a_real_kernel_and_checks_every_point(tmp_path):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "NBTRACK_"))}
    env["NBTRACK_BENCH_RESULTS"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.metric_throughput", "--quick", "--methods", "nbtrack",
         "--live-sizes", "20000", "--live-repeats", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((tmp_path / "metric_throughput.json").read_text())
    assert results["verification"]["ok"], results["verification"]
    [row] = results["live_panel"]["rows"]
    [shown], [hidden] = row["samples"]["panel"], row["samples"]["no panel"]
    # Drawn on the first point at least, then once more when the cell ended; none with --no-live.
    assert shown["draws"] >= 1 and shown["displays"] == shown["draws"] + 1, shown
    assert hidden["draws"] == hidden["displays"] == 0, hidden
    assert "panel showing" in done.stdout and "issue 16" in done.stdout
