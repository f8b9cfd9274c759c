"""The leaderboard in a real browser: JupyterLab 4, Debian's Chromium driven by Playwright.

A person's path through ``%track_board``: run the notebook, pick the best run, Register it, Set
champion; then MLflow (and a fresh process loading ``models:/iris-clf@champion``) sees the result.
The probe test before it checks the plumbing alone (server, kernel, widget rendering, clicks reaching
the kernel), so a failure there is not blamed on the board.

Needs /usr/bin/chromium (scripts/install_browser.sh, as root) and the playwright and jupyterlab
packages; without Chromium the tests skip, or fail under ``NBTRACK_REQUIRE_ALL=1`` (as in CI).
Playwright's own browser download is never used.

Pictures (the board's screenshot, a failure's page) go to the test's temporary folder. With
``NBTRACK_REFRESH_DOCS=1`` the board's screenshot rewrites ``docs/board.png``, the picture the README
shows; nothing else writes to the checkout.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from browser import (
    CELLS_TIMEOUT_MS,
    CLICK_TIMEOUT_MS,
    JupyterLab,
    failure_report,
    launch_chromium,
    open_notebook,
    run_all_cells,
    skip_reason,
)
from conftest import REPO, write_notebook
from needs import missing

# The README shows this screenshot; only NBTRACK_REFRESH_DOCS=1 rewrites it.
DOCS_SCREENSHOT = REPO / "docs" / "board.png"
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
        expect(options).to_have_count(len(C_VALUES))
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
