"""The leaderboard in a real browser: JupyterLab 4, Debian's Chromium driven by Playwright.

A person's path through ``%track_board``: run the notebook, pick the best run, Register it, Set
champion; then MLflow (and a fresh process loading ``models:/iris-clf@champion``) sees the result.
The probe test before it checks the plumbing alone (server, kernel, widget rendering, clicks reaching
the kernel), so a failure there is not blamed on the board. The live panel's test watches a tracked
cell train for about 15 s: its curves move in the page while the cell runs, and the final picture
stays once it has ended.

Needs /usr/bin/chromium (scripts/install_browser.sh, as root) and the playwright and jupyterlab
packages; without Chromium the tests skip, or fail under ``NBTRACK_REQUIRE_ALL=1`` (as in CI).
Playwright's own browser download is never used.

Pictures (the board's and the live panel's screenshots, a failure's page) go to the test's temporary
folder. With ``NBTRACK_REFRESH_DOCS=1`` they rewrite ``docs/board.png`` and ``docs/live_panel.png``,
the pictures the docs show; nothing else writes to the checkout.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest
from browser import (
    CELLS_TIMEOUT_MS,
    CLICK_TIMEOUT_MS,
    KERNEL_TIMEOUT_MS,
    NOTEBOOK,
    JupyterLab,
    cell_prompt,
    failure_report,
    launch_chromium,
    live_panels,
    open_notebook,
    run_all_cells,
    save_notebook,
    skip_reason,
)
from conftest import REPO, write_notebook
from needs import missing

# The docs show these screenshots; only NBTRACK_REFRESH_DOCS=1 rewrites them.
DOCS_SCREENSHOT = REPO / "docs" / "board.png"
DOCS_LIVE_SCREENSHOT = REPO / "docs" / "live_panel.png"
EXPERIMENT = "browser-demo"
MODEL = "iris-clf"
C_VALUES = ("0.1", "1.0", "10.0")


def refresh_docs() -> bool:
    """Whether to rewrite the README's picture (``NBTRACK_REFRESH_DOCS=1``)."""
    return os.environ.get("NBTRACK_REFRESH_DOCS", "") not in ("", "0")


@pytest.fixture(scope="module", autouse=True)
def chromium_installed():
    """Skip without Chromium (fail under ``NBTRACK_REQUIRE_ALL=1``), before any server starts."""
    if skip_reason() is not None:
        missing(skip_reason())


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 whose kernels track into a temporary SQLite store."""
    base = tmp_path_factory.mktemp("lab")
    lab = JupyterLab(base, env={"MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}"})
    lab.start()
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


@contextlib.contextmanager
def explained(page, lab, name: str):
    """On a Playwright timeout, fail with a screenshot (in the lab's temporary folder), the cells'
    outputs and the server log."""
    from playwright.sync_api import Error as PlaywrightError

    failure = None
    try:
        yield
    except (PlaywrightError, AssertionError) as error:
        failure = str(error)
    if failure is not None:
        report = failure_report(page, lab, lab.base / f"failure-{name}.png")
        raise pytest.fail.Exception(f"{failure}\n{report}", pytrace=False) from None


def test_widgets_render_and_clicks_reach_the_kernel(jupyter_lab, page):
    from playwright.sync_api import expect

    write_notebook(jupyter_lab.root / "probe.ipynb", [
        textwrap.dedent("""\
            import ipywidgets as widgets
            label = widgets.Label("not clicked").add_class("probe-label")
            button = widgets.Button(description="x").add_class("probe")
            def on_click(_):
                label.value = "clicked in the kernel"
            button.on_click(on_click)
            widgets.VBox([button, label])"""),
    ])
    with explained(page, jupyter_lab, "probe"):
        open_notebook(page, jupyter_lab, "probe.ipynb")
        run_all_cells(page)
        button = page.locator("button.probe")
        button.wait_for(state="visible", timeout=CELLS_TIMEOUT_MS)
        expect(page.locator(".probe-label")).to_have_text("not clicked")
        button.click()
        expect(page.locator(".probe-label")).to_have_text("clicked in the kernel",
                                                          timeout=CLICK_TIMEOUT_MS)


def board_notebook(path: Path) -> Path:
    tracked = [
        f"%%track -e {EXPERIMENT} -n logreg-C{c}\n"
        f"clf = LogisticRegression(C={c}, max_iter=500).fit(X, y)\n"
        f"val_acc = clf.score(X, y)"
        for c in C_VALUES
    ]
    return write_notebook(path, [
        "%load_ext nbtrack",
        "from sklearn.datasets import load_iris\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "from sklearn.metrics import accuracy_score, roc_auc_score\n"
        "X, y = load_iris(return_X_y=True, as_frame=True)",
        *tracked,
        f"%track_board -e {EXPERIMENT} -m val_acc",
    ])


def run_named(client, label: str) -> str:
    """The run id behind a selector label like '1. logreg-C1.0 · val_acc=0.9733'."""
    match = re.match(r"\s*\d+\.\s+(\S+)", label)
    assert match, f"selector label does not start with a rank and a run name: {label!r}"
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.mlflow.runName = '{match.group(1)}'")
    assert len(runs) == 1, f"{len(runs)} runs named {match.group(1)!r}"
    return runs[0].info.run_id


def test_register_and_set_champion_in_a_real_browser(jupyter_lab, page, tmp_path):
    from mlflow import MlflowClient
    from playwright.sync_api import expect

    board_notebook(jupyter_lab.root / "board.ipynb")
    tracking_uri = jupyter_lab.env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=tracking_uri)
    with explained(page, jupyter_lab, "board"):
        open_notebook(page, jupyter_lab, "board.ipynb")
        run_all_cells(page)
        board = page.locator(".nbtrack-board")
        board.wait_for(state="visible", timeout=CELLS_TIMEOUT_MS)
        page.locator(".nbtrack-table table").wait_for(state="visible")
        options = page.locator(".nbtrack-select select option")
        # The cells return once their runs are journaled; the writer puts them in the store
        # (a model each) after, and the board redraws as each lands: seconds apart under load.
        expect(options).to_have_count(len(C_VALUES), timeout=CLICK_TIMEOUT_MS)
        expect(page.locator(".nbtrack-table td", has_text="RUNNING")).to_have_count(
            0, timeout=CLICK_TIMEOUT_MS)  # a run the writer has opened, its model not yet in
        first = options.first
        label = first.inner_text().replace("\xa0", " ")
        assert label.startswith("1. "), label
        run_id = run_named(client, label)
        page.locator(".nbtrack-select select").select_option(index=0)
        page.locator(".nbtrack-model-name input").fill(MODEL)
        page.locator("button.nbtrack-register").click()
        message = page.locator(".nbtrack-message")
        expect(message).to_contain_text(f"{MODEL} v1", timeout=CLICK_TIMEOUT_MS)
        expect(page.locator(".nbtrack-version select")).to_have_value(re.compile(r".*v1\b.*"))
        page.locator("button.nbtrack-set-alias").click()
        expect(message).to_contain_text("champion", timeout=CLICK_TIMEOUT_MS)
        expect(message).to_contain_text("v1")
        expect(page.locator("button.nbtrack-confirm")).to_be_hidden()
        # The table redraws with the champion's row marked.
        expect(page.locator(".nbtrack-table tr.nbtrack-champion")).to_have_count(1)
        screenshot = DOCS_SCREENSHOT if refresh_docs() else tmp_path / "board.png"
        board.screenshot(path=str(screenshot))
        assert screenshot.read_bytes().startswith(b"\x89PNG"), screenshot

    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == "1"
    assert champion.run_id == run_id

    load = (
        "import mlflow.pyfunc\n"
        "from sklearn.datasets import load_iris\n"
        f"model = mlflow.pyfunc.load_model('models:/{MODEL}@champion')\n"
        "X = load_iris(as_frame=True).data.head(2)\n"
        "print(len(model.predict(X)))\n"
    )
    result = subprocess.run([sys.executable, "-c", load], cwd=jupyter_lab.root,
                            env={**jupyter_lab.env}, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "2", result.stdout


# -- the live panel ------------------------------------------------------------------------------

EPOCHS, EPOCH_SECONDS = 60, 0.25  # 15 s of "training"
LIVE_CELL = f"""%%track -e live-demo -n live-training
import math, time
import nbtrack
print("training", flush=True)
for epoch in range({EPOCHS}):
    time.sleep({EPOCH_SECONDS})
    nbtrack.log_metric("train_loss", math.exp(-epoch / 15) + 0.05, step=epoch)
    nbtrack.log_metric("val_loss", math.exp(-epoch / 20) + 0.12, step=epoch)
    nbtrack.log_metric("val_acc", 0.97 - 0.5 * math.exp(-epoch / 12), step=epoch)
print("trained")"""
LAST = EPOCHS - 1
FINAL_LEGEND = [f"train_loss {math.exp(-LAST / 15) + 0.05:.4g}",
                f"val_loss {math.exp(-LAST / 20) + 0.12:.4g}",
                f"val_acc {0.97 - 0.5 * math.exp(-LAST / 12):.4g}"]


def the_panel(cell) -> dict:
    panels = live_panels(cell)
    assert len(panels) == 1, f"{len(panels)} live panels under the cell (one display, updated in place)"
    return panels[0]


def points(panel: dict) -> int:
    """How many points the panel's curves have (a lone first point is a dot, not a curve)."""
    return sum(len(line.split()) for line in panel["lines"])


def legend(panel: dict, key: str) -> str:
    """The legend entry of ``key``: the key and its latest value."""
    return next(text for text in panel["texts"] if text.startswith(f"{key} "))


def test_live_panel_moves_while_the_cell_trains_and_stays_after(jupyter_lab, page, tmp_path):
    from playwright.sync_api import expect

    write_notebook(jupyter_lab.root / "live.ipynb", ["%load_ext nbtrack", LIVE_CELL])
    with explained(page, jupyter_lab, "live"):
        open_notebook(page, jupyter_lab, "live.ipynb")
        run_all_cells(page)
        cell = page.locator(f"{NOTEBOOK} .jp-Cell").nth(1)
        expect(cell.locator(".jp-OutputArea")).to_contain_text("training", timeout=CELLS_TIMEOUT_MS)
        # The first point draws the panel: it is there within a few of the cell's 15 s.
        deadline = time.monotonic() + 10
        while not live_panels(cell) and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        early = the_panel(cell)
        page.wait_for_timeout(3_000)
        later = the_panel(cell)
        assert cell_prompt(cell) == "[*]:", "the cell ended before the panel was read twice"
        assert "trained" not in cell.locator(".jp-OutputArea").inner_text()
        # New points in the page: the curves grew and the latest loss in the legend changed.
        assert points(later) > points(early), (early, later)
        assert legend(later, "train_loss") != legend(early, "train_loss"), (early, later)
        if refresh_docs():  # the docs' picture: the cell halfway through its training
            page.wait_for_timeout(4_000)
            cell.screenshot(path=str(DOCS_LIVE_SCREENSHOT))
            assert DOCS_LIVE_SCREENSHOT.read_bytes().startswith(b"\x89PNG")

        expect(cell.locator(".jp-OutputArea")).to_contain_text("nbtrack: run 'live-training'",
                                                              timeout=CELLS_TIMEOUT_MS)
        expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]:"))
        final = the_panel(cell)
        for latest in FINAL_LEGEND:
            assert latest in final["texts"], (latest, final["texts"])
        # Every epoch is on its curve: train and validation loss in one chart, accuracy in another.
        assert [len(line.split()) for line in final["lines"][:3]] == [EPOCHS] * 3, final["lines"]
        assert {"loss", "acc"} <= set(final["texts"])
        cell.screenshot(path=str(tmp_path / "live_panel_final.png"))

        # The final picture stays: saved with the notebook, and shown again when it is reopened.
        save_notebook(page)
        saved = jupyter_lab.root / "live.ipynb"
        deadline = time.monotonic() + 30
        while "nbtrack-live" not in saved.read_text() and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        outputs = [o for o in nbformat.read(saved, 4).cells[1].outputs
                   if "nbtrack" in o.get("metadata", {})]
        assert len(outputs) == 1 and all(latest in outputs[0].data["image/svg+xml"]
                                         for latest in FINAL_LEGEND), outputs
        page.reload(wait_until="domcontentloaded")
        reopened = page.locator(f"{NOTEBOOK} .jp-Cell").nth(1)
        reopened.locator(".jp-OutputArea img").wait_for(state="visible", timeout=KERNEL_TIMEOUT_MS)
        assert the_panel(reopened) == final
