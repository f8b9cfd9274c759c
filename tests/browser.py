"""Helpers for the real-browser tests: a JupyterLab server on 127.0.0.1, Debian's Chromium driven by
Playwright, and the few JupyterLab gestures the tests need (wait for the kernel, Run All Cells).

Nothing here downloads a browser: Playwright launches /usr/bin/chromium (scripts/install_browser.sh
installs it) through ``executable_path``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
# First kernel start, importing mlflow and logging sklearn models take a while on 2 cores.
KERNEL_TIMEOUT_MS = 120_000
CELLS_TIMEOUT_MS = 300_000
CLICK_TIMEOUT_MS = 120_000

# Settings that keep JupyterLab quiet and deterministic: no news/update toasts, every cell of the
# notebook in the DOM (no virtual scrolling), no autosave racing the test.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return (f"{CHROMIUM} is missing: run scripts/install_browser.sh as root "
                "(apt-get install chromium chromium-driver)")
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 with no token, serving ``root``, in its own Jupyter dirs.

    ``env`` is added to the server's environment (and so to its kernels').
    """

    def __init__(self, base: Path, env: dict[str, str] | None = None):
        self.base = base
        self.root = base / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.runtime = base / "jupyter-runtime"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "jupyterlab.log"
        self.env = self._environment(env or {})
        self.process: subprocess.Popen | None = None

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        # The tests' own MPLBACKEND=Agg (conftest) would stop kernels from drawing inline.
        for name in ("MPLBACKEND", "MLFLOW_EXPERIMENT_NAME", "JPY_SESSION_NAME",
                     "PAPERMILL_INPUT_PATH", "NBTRACK_BATCH", "JUPYTER_TOKEN"):
            env.pop(name, None)
        settings = self.base / "lab-settings"
        for relative, values in LAB_SETTINGS.items():
            target = settings / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(values))
        env.update({
            "JUPYTER_CONFIG_DIR": str(self.base / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.base / "lab-workspaces"),
            "IPYTHONDIR": str(self.base / "ipython"),
            # The lab's kernels journal here, not in ~/.local/state: a kernel recovers the runs
            # other processes left in its journal folder, and this machine's leftovers are not
            # the test's.
            "NBTRACK_JOURNAL_DIR": str(self.base / "journal"),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    def start(self, timeout: float = 90) -> JupyterLab:
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
            "--IdentityProvider.token=", "--PasswordIdentityProvider.hashed_password=",
            "--ServerApp.password_required=False", "--ServerApp.disable_check_xsrf=True",
            f"--ServerApp.root_dir={self.root}", "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False",
        ]
        if os.geteuid() == 0:  # CI and these machines run as root
            command.append("--ServerApp.allow_root=True")
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, cwd=self.root, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer on {self.url} in {timeout}s:\n{self.log()}")

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def kernels(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/kernels", timeout=5) as response:
            return json.load(response)

    def _shutdown_kernels(self) -> None:
        try:
            for kernel in self.kernels():
                request = urllib.request.Request(f"{self.url}/api/kernels/{kernel['id']}",
                                                 method="DELETE")
                urllib.request.urlopen(request, timeout=30).close()
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            pass

    def _leftover_kernels(self) -> list[int]:
        """Pids of kernels this server started that still run (their connection file is ours)."""
        marker = str(self.runtime).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        """Shut down the kernels, then the server; kill what did not stop in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._shutdown_kernels()
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in self._leftover_kernels():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process = None


def launch_chromium(playwright):
    """Debian's Chromium through Playwright (never Playwright's own browser build)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=CHROMIUM_ARGS)


# -- JupyterLab gestures ---------------------------------------------------------------------------

NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook shown in the main area


def open_notebook(page, lab: JupyterLab, name: str) -> None:
    """Open ``name`` alone in a fresh JupyterLab workspace and wait until its kernel is idle.

    Each notebook gets its own workspace: the default one would restore notebooks an earlier test
    opened, and Run All Cells would then go to whichever of them JupyterLab makes current.
    """
    workspace = re.sub(r"[^A-Za-z0-9-]", "-", Path(name).stem)
    page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{name}", wait_until="domcontentloaded")
    page.locator(NOTEBOOK).wait_for(state="visible", timeout=KERNEL_TIMEOUT_MS)
    wait_kernel_idle(page)
    # Focus the notebook, so that menu commands act on it.
    page.locator(f"{NOTEBOOK} .jp-Cell .jp-InputPrompt").first.click()


def wait_kernel_idle(page, timeout: int = KERNEL_TIMEOUT_MS) -> None:
    """Wait for the notebook toolbar's execution indicator and the status bar to say idle."""
    page.locator(f'{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status="idle"]'
                 ).wait_for(state="attached", timeout=timeout)
    page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\| Idle$")).wait_for(
        state="visible", timeout=timeout)


def run_all_cells(page) -> None:
    """Run → Run All Cells, through the menu bar as a person would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def save_notebook(page) -> None:
    """File → Save Notebook, through the menu bar (autosave is off)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^File$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Save Notebook$")).click()


def cell_prompt(cell) -> str:
    """A cell's input prompt: ``[*]:`` while it runs, ``[3]:`` once it has run."""
    return cell.locator(".jp-InputPrompt").inner_text().strip()


# JupyterLab shows an image/svg+xml output as an <img> with a data: URL (never inline), so the
# panel's SVG is read back from that URL; an inline svg.nbtrack-live counts too.
_LIVE_PANELS_JS = """cell => {
  const parse = text => new DOMParser().parseFromString(text, 'image/svg+xml').documentElement;
  const svgs = [...cell.querySelectorAll('svg.nbtrack-live')];
  for (const img of cell.querySelectorAll('.jp-OutputArea img')) {
    const src = img.getAttribute('src') || '';
    if (!src.startsWith('data:image/svg+xml')) continue;
    const comma = src.indexOf(',');
    const body = src.slice(comma + 1);
    svgs.push(parse(src.slice(0, comma).endsWith(';base64') ? atob(body) : decodeURIComponent(body)));
  }
  return svgs.filter(svg => svg.classList.contains('nbtrack-live')).map(svg => ({
    texts: [...svg.querySelectorAll('text')].map(t => t.textContent),
    lines: [...svg.querySelectorAll('polyline')].map(p => p.getAttribute('points')),
  }));
}"""


def live_panels(cell) -> list[dict]:
    """The nbtrack live panels a cell shows, each as its SVG's ``texts`` and polyline ``lines``
    (the ``points`` attributes), read from what the browser rendered."""
    return cell.evaluate(_LIVE_PANELS_JS)


def cell_outputs(page) -> str:
    """Every cell's output text, for failure messages."""
    texts = page.locator(f"{NOTEBOOK} .jp-Cell .jp-OutputArea").all_inner_texts()
    return "\n---\n".join(text.strip()[-1500:] for text in texts)


def failure_report(page, lab: JupyterLab, screenshot: Path) -> str:
    """What the page and the server show, with a screenshot saved to ``screenshot``."""
    try:
        page.screenshot(path=str(screenshot), full_page=True)
        shot = f"screenshot: {screenshot}"
    except Exception as error:  # the page may be gone
        shot = f"(no screenshot: {error})"
    try:
        outputs = cell_outputs(page)
    except Exception as error:
        outputs = f"(outputs unreadable: {error})"
    return f"{shot}\n== cell outputs ==\n{outputs}\n== server log (tail) ==\n{lab.log(2000)}"
