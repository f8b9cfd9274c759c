"""``python -m benchmarks --quick`` still runs: every benchmark verifies its work and writes its
results, and the report writes the page and its plots. Timings are never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

BENCHMARKS = ["load_ext", "cell_overhead", "metric_throughput", "sweep", "push"]


def test_quick_benchmarks_run_verify_their_work_and_write_results_and_page(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs"
    page_in_repo = REPO / "docs" / "benchmarks.md"
    before = page_in_repo.stat().st_mtime_ns if page_in_repo.exists() else None
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "NBTRACK_"))}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--results", str(results), "--docs", str(docs)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    expected = BENCHMARKS + (["board_scale"] if (REPO / "benchmarks" / "board_scale.py").exists() else [])
    for name in expected:
        data = json.loads((results / f"{name}.json").read_text())
        assert data["quick"] is True
        assert (docs / "benchmarks" / f"{name}.png").stat().st_size > 0
        if "verification" in data:
            assert data["verification"]["ok"], data["verification"]
    overhead = json.loads((results / "cell_overhead.json").read_text())
    assert any(row["cell"] == "reference-10p-5m-1f" for row in overhead["cells"])
    framework = {row["cell"]: row for row in overhead["frameworks"]["cells"]}
    assert set(framework) == {"xgboost-train", "torch-mlp"}
    assert all(row["variants"][v] for row in framework.values() for v in ("untracked", "tracked", "hand"))
    assert framework["xgboost-train"]["variants"]["autolog"]  # mlflow.xgboost.autolog()
    assert framework["torch-mlp"]["variants"]["autolog"] or framework["torch-mlp"]["autolog_note"]
    assert {row["cell"] for row in overhead["in_store"]} >= set(framework)
    push = json.loads((results / "push.json").read_text())
    assert push["runs"] == 20 and push["verification"]["stores_checked"] == 3
    assert [row["way"] for row in push["rows"]] == ["MLflow by hand", "nbtrack push (CLI)",
                                                    "nbtrack push (in-process)"]
    assert all(row["seconds"] > 0 and row["ratio_to_hand"] > 0 for row in push["rows"])
    assert push["bound"]["met"] in (True, False)  # reported, never asserted
    page = (docs / "benchmarks.md").read_text()
    assert "## Targets" in page and "Quick run" in page and "issue 18.7" in page
    for name in expected:
        assert f"benchmarks/{name}.png" in page
    # The quick run left the repository's own page alone.
    assert (page_in_repo.stat().st_mtime_ns if page_in_repo.exists() else None) == before
