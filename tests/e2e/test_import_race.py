"""The first cells of fresh kernels import the heavy stack while nbtrack's own threads import too
(issue 13): no cell of any kernel may fail, and every tracked cell's run reaches the store.

Python's import system does not make concurrent first imports of one package family safe: two
threads importing numpy, pandas, scipy or scikit-learn modules in different orders can hand one
of them a partially initialized module (``cannot import name 'asanyarray' from partially
initialized module 'numpy._core.numeric'``). nbtrack imports on threads of its own while user code
runs: MLflow after ``%load_ext`` ("nbtrack-import-mlflow"), the store's opening during the first
tracked cell ("nbtrack-open-store"), recovery of ended kernels' journals ("nbtrack-recovery"), the
writer's first sklearn model ("nbtrack-writer": ``mlflow.sklearn`` and skops).

Here 24 real kernels (python3 kernelspec, driven through jupyter_client) run three at a time on a
machine kept busy by one CPU-burning process per core, each sent all its cells at once (as "Run
All" does: a cell starts the instant the previous one returns). They vary what their first cells
do: imports in the first tracked cell, in an untracked cell, in the same cell as ``%load_ext``,
and in different orders (numpy, pandas, sqlalchemy, scikit-learn or matplotlib first). Every
kernel fits a scikit-learn model with only ``sklearn.linear_model`` imported and, at once,
imports other parts of scikit-learn and scipy while the writer logs that model.

Every other kernel (but the last three) ends with runs left in the shared journal: its store is
unreachable while it runs (a file where the store's folder should be, put back once the kernel has
ended), and one in three of those is SIGKILLed in the middle of a tracked cell. Kernels starting
after them recover those journals (a scikit-learn model each: ``mlflow.sklearn`` again) on their
recovery thread while their own first cells import.

What is asserted does not depend on the interleaving: no cell of any kernel fails or reports an
import problem, nbtrack warns of nothing in kernels whose store is up, and in the end (after
``nbtrack sync`` for what the last kernels left) every tracked cell's run is in its store, with
its status and its model, and the journal is empty. How often the race is met depends on the
machine; the test only makes it likely.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import nbtrack_cli

KERNELS = 24
AT_ONCE = 3
KERNEL_TIMEOUT = 240  # seconds a kernel may take for all its cells, on a busy machine

# Import lines of the heavy stack, in different orders; each order binds the same names.
IMPORTS = {
    "numpy": "import numpy as np",
    "pandas": "import pandas as pd",
    "scipy": "import scipy.stats",
    "sklearn": "from sklearn.linear_model import LogisticRegression",
    "sqlalchemy": "import sqlalchemy",
    "matplotlib": "import matplotlib.pyplot as plt",
}
ORDERS = [
    ["pandas", "numpy", "scipy", "sklearn", "sqlalchemy", "matplotlib"],
    ["sqlalchemy", "pandas", "matplotlib", "numpy", "sklearn", "scipy"],
    ["sklearn", "scipy", "pandas", "numpy", "matplotlib", "sqlalchemy"],
    ["numpy", "scipy", "sklearn", "pandas", "sqlalchemy", "matplotlib"],
    ["matplotlib", "sqlalchemy", "sklearn", "pandas", "scipy", "numpy"],
]
# Where the imports go: the first tracked cell, an untracked cell, or the cell of %load_ext.
PLACES = ["tracked", "untracked", "tracked", "same-cell"]

USE_STACK = (
    "frame = pd.DataFrame(np.random.default_rng(seed).normal(size=(300, 4)), columns=list('abcd'))\n"
    "engine = sqlalchemy.create_engine('sqlite://')\n"
    "frame.to_sql('points', engine, index=False)\n"
    "back = pd.read_sql('select * from points', engine)\n"
    "skew = float(scipy.stats.skew(back['a']))\n"
    "fig, ax = plt.subplots()\n"
    "ax.plot(back['a'].cumsum())\n"
)
# Fitted with only sklearn.linear_model imported: the writer's mlflow.sklearn and skops import
# the rest of scikit-learn while the next cell does.
FIT = (
    "X = frame[['a', 'b', 'c', 'd']].to_numpy()\n"
    "y = (frame['a'] + frame['b'] > 0).astype(int).to_numpy()\n"
    "C = 0.5\n"
    "clf = LogisticRegression(C=C, max_iter=200).fit(X, y)\n"
    "train_acc = float(clf.score(X, y))\n"
)
MORE_SKLEARN = [
    "from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier",
    "from sklearn.svm import SVC",
    "from sklearn.neighbors import KNeighborsClassifier",
    "from sklearn.tree import DecisionTreeClassifier",
    "from sklearn.model_selection import cross_val_score",
    "from sklearn.pipeline import make_pipeline",
    "from sklearn.preprocessing import StandardScaler",
]
MORE_SCIPY = ["import scipy.optimize", "import scipy.signal", "import scipy.interpolate",
              "import scipy.sparse.linalg", "import scipy.spatial"]
USE_MORE = (
    "forest_cv = float(cross_val_score(RandomForestClassifier(n_estimators=10, random_state=0), "
    "X, y, cv=3).mean())\n"
    "knn = make_pipeline(StandardScaler(), KNeighborsClassifier()).fit(X, y)\n"
    "root = scipy.optimize.brentq(lambda v: v ** 3 - 2, 0, 2)\n"
)
DYING = ("import time\nimport nbtrack\nprint('training', flush=True)\n"
         "for step in range(60_000):  # ten minutes: the kernel is killed long before\n"
         "    nbtrack.log_metric('loss', 1.0 / (step + 1), step=step)\n"
         "    time.sleep(0.01)\n")

# What an import that lost the race looks like, wherever it is shown (a cell's error, a warning
# of nbtrack's about a run it could not write, a thread's traceback).
IMPORT_TROUBLE = re.compile(r"ImportError|ModuleNotFoundError|partially initialized|circular import"
                            r"|Unable to import|AttributeError|Traceback")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Kernel:
    """One kernel to run: its cells, where its runs go, and the runs the store must end with."""

    name: str
    cells: list[str]
    env: dict[str, str]
    store: str
    experiment: str
    runs: dict[str, str] = field(default_factory=dict)  # run name -> final status
    models: set[str] = field(default_factory=set)  # run names that log a model
    away: Path | None = None  # the store's folder, put aside while the kernel runs
    log: Path | None = None  # the kernel process's own stdout and stderr
    killed_during: str | None = None  # SIGKILL once the last cell prints this


@dataclass
class CellResult:
    source: str
    status: str = "no reply"
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (stream or kind, text)


@dataclass
class KernelResult:
    kernel: Kernel
    cells: list[CellResult]
    problem: str | None = None  # the kernel itself failed: no start, no answer

    def failures(self) -> list[str]:
        found = [f"kernel {self.kernel.name}, {self.problem}"] if self.problem else []
        store_up = self.kernel.away is None
        for index, cell in enumerate(self.cells):
            killed = self.kernel.killed_during is not None and index == len(self.cells) - 1
            reasons = []
            if cell.status != "ok" and not killed:
                reasons.append(f"status {cell.status}")
            for kind, text in cell.outputs:
                if kind == "error":
                    reasons.append(text)
                elif kind == "stderr" and IMPORT_TROUBLE.search(text):
                    reasons.append(text)
                elif kind == "stderr" and store_up and "nbtrack:" in text:
                    reasons.append(text)  # nbtrack could not do something with the store up
            if reasons:
                shown = "\n".join(ANSI.sub("", reason) for reason in reasons)
                found.append(f"kernel {self.kernel.name}, cell {index + 1}:\n{cell.source}\n"
                             f"---\n{shown}")
        # What the kernel's threads printed outside any cell (after the last one, as it exits).
        printed = self.kernel.log.read_text() if self.kernel.log.exists() else ""
        outside = [line for line in printed.splitlines() if IMPORT_TROUBLE.search(line)
                   or (store_up and "nbtrack:" in line)]
        if outside:
            found.append(f"kernel {self.kernel.name}, outside its cells:\n" + "\n".join(outside))
        return found


def import_lines(order: list[str]) -> str:
    return "\n".join(IMPORTS[name] for name in order) + "\n"


def track(kernel: Kernel, what: str, status: str = "FINISHED", model: bool = False) -> str:
    """The ``%%track`` line of a cell of ``kernel``, noting the run the store must end with."""
    run = f"{kernel.name}-{what}"
    kernel.runs[run] = status
    if model:
        kernel.models.add(run)
    return f"%%track -e {kernel.experiment} -n {run}\n"


def add_cells(kernel: Kernel, variant: int, load: str) -> None:
    """The cells every kernel runs: the heavy stack imported right after ``load`` (in the first
    tracked cell, in an untracked cell, or in the same cell), a model fitted with only
    ``sklearn.linear_model`` imported, and at once more of scikit-learn and scipy imported while
    the writer logs that model.
    """
    order = ORDERS[variant % len(ORDERS)]
    place = PLACES[variant // 2 % len(PLACES)]  # leaving and fresh kernels alternate: both get each
    stack = f"seed = {variant}\n" + import_lines(order) + USE_STACK
    if place == "same-cell":
        kernel.cells.append(f"{load}\n{stack}")
    elif place == "untracked":
        kernel.cells += [load, stack]
    else:
        kernel.cells += [load, track(kernel, "imports") + stack]
    kernel.cells.append(track(kernel, "fit", model=True) + FIT)
    more = MORE_SKLEARN + MORE_SCIPY if variant % 3 else MORE_SCIPY + MORE_SKLEARN
    kernel.cells.append("\n".join(more) + "\n" + USE_MORE)


def fresh_kernel(name: str, variant: int, base_env: dict[str, str], store: str) -> Kernel:
    """A kernel whose store is up; every other one makes each tracked cell wait for its run."""
    kernel = Kernel(name, [], {**base_env, "MLFLOW_TRACKING_URI": store}, store, "race")
    if variant // 4 % 2 == 0:  # the others: the writer logs the model while the next cell runs
        kernel.env["NBTRACK_WAIT_FOR_STORE"] = "1"
    add_cells(kernel, variant, "%load_ext nbtrack")
    # What nbtrack's threads show lands in a cell while one runs: wait in one for the writer.
    kernel.cells.append("import nbtrack\nstored = nbtrack.flush(timeout=120)")
    return kernel


def leaving_kernel(name: str, variant: int, base_env: dict[str, str], folder: Path,
                   template: Path, killed: bool) -> Kernel:
    """A kernel whose store is unreachable while it runs, so that its runs stay in the journal
    for kernels after it to recover; SIGKILLed in the middle of its last cell when ``killed``.
    """
    away = folder / name
    away.mkdir(parents=True)
    shutil.copy(template, away / "mlflow.db")
    store = f"sqlite:///{away / 'mlflow.db'}"
    kernel = Kernel(name, [], {**base_env, "MLFLOW_TRACKING_URI": store}, store, name, away=away)
    # drain_seconds = 0: the kernel exits at once, its runs left in the journal.
    add_cells(kernel, variant, "%load_ext nbtrack\n%config Nbtrack.drain_seconds = 0")
    if killed:
        kernel.cells.append(track(kernel, "dies", status="KILLED") + DYING)
        kernel.killed_during = "training"
    return kernel


def plan(base_env: dict[str, str], store: str, folder: Path, template: Path) -> list[Kernel]:
    """Kernels in the order they start: leaving and fresh ones in turn, so that ended kernels'
    journals wait while new kernels start; the last three are fresh.
    """
    kernels, leaving = [], 0
    for variant in range(KERNELS):
        if variant % 2 == 0 and variant < KERNELS - 3:
            kernels.append(leaving_kernel(f"left-{variant:02d}", variant, base_env, folder,
                                          template, killed=leaving % 3 == 1))
            leaving += 1
        else:
            kernels.append(fresh_kernel(f"fresh-{variant:02d}", variant, base_env, store))
    return kernels


_LAUNCH = threading.Lock()  # kernels launched at the same instant could pick the same ports


def run_kernel(kernel: Kernel, cwd: Path) -> KernelResult:
    """Start ``kernel``, send all its cells at once, collect every cell's outputs and reply."""
    from jupyter_client import KernelManager

    if kernel.away is not None:  # a file where the store's folder should be: unreachable
        kernel.away.rename(kernel.away.with_name(kernel.away.name + ".aside"))
        kernel.away.write_text("in the way: the store is unreachable while this kernel runs")
    cells = [CellResult(source) for source in kernel.cells]
    result = KernelResult(kernel, cells)
    manager = KernelManager(kernel_name="python3")
    client = None
    killed = False
    log = open(kernel.log, "w")  # noqa: SIM115 - the kernel process writes to it until it ends
    try:
        with _LAUNCH:
            manager.start_kernel(cwd=str(cwd), env=kernel.env, stdout=log, stderr=subprocess.STDOUT)
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(timeout=120)
        by_id = {client.execute(cell.source, stop_on_error=False): cell for cell in cells}
        idle: set[str] = set()
        deadline = time.monotonic() + KERNEL_TIMEOUT
        while len(idle) < len(by_id) and not killed:
            try:
                message = client.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty:
                running = [i + 1 for i, c in enumerate(cells) if c.status == "no reply"]
                result.problem = f"no answer in {KERNEL_TIMEOUT} s; cells without reply {running}"
                return result
            cell = by_id.get(message["parent_header"].get("msg_id"))
            if cell is None:
                continue
            collect(message, cell)
            if kernel.killed_during and cell is cells[-1] and any(
                    kernel.killed_during in text for _, text in cell.outputs):
                os.kill(manager.provisioner.process.pid, signal.SIGKILL)  # mid-cell
                manager.provisioner.process.wait(timeout=60)
                killed = True
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                idle.add(message["parent_header"]["msg_id"])
        # Every reply (but the killed cell's); the shell channel may also hold late replies to
        # the kernel_info requests of wait_for_ready.
        expected = cells[:-1] if killed else cells
        while any(cell.status == "no reply" for cell in expected):
            try:
                reply = client.get_shell_msg(timeout=60)
            except queue.Empty:
                # Every cell went idle on iopub, yet a reply never came: seen once in CI among 24
                # loaded kernels (clients know it: kafonek/kernel-sidecar#12). The cell's iopub
                # messages say as much as its reply would: an import the race broke shows there
                # as an error output.
                for cell in expected:
                    if cell.status == "no reply":
                        errors = any(kind == "error" for kind, _ in cell.outputs)
                        cell.status = "error" if errors else "ok"
                break
            answered = by_id.get(reply["parent_header"].get("msg_id"))
            if answered is not None:
                answered.status = reply["content"]["status"]
        if not killed:
            manager.shutdown_kernel(now=False)
            # What nbtrack's threads showed after the last cell's reply, until the kernel ended.
            while True:
                try:
                    message = client.get_iopub_msg(timeout=0.5)
                except queue.Empty:
                    break
                collect(message, cells[-1])
    except Exception as error:  # the kernel did not start or answer: a failure of the kernel
        result.problem = f"{type(error).__name__}: {error}"
    finally:
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
        if client is not None:
            client.stop_channels()
        manager.cleanup_resources()
        log.close()
        if kernel.away is not None:  # the kernel has ended: its store is reachable again
            kernel.away.unlink()
            kernel.away.with_name(kernel.away.name + ".aside").rename(kernel.away)
    return result


def collect(message: dict, cell: CellResult) -> None:
    """Keep one iopub message's output on ``cell``."""
    kind, content = message["msg_type"], message["content"]
    if kind == "stream":
        cell.outputs.append((content["name"], content["text"]))
    elif kind == "error":
        cell.outputs.append(("error", "\n".join(content["traceback"])))
    elif kind in ("execute_result", "display_data"):
        cell.outputs.append((kind, content.get("data", {}).get("text/plain", "")))


@pytest.fixture
def busy_machine():
    """One process spinning on each core for the test's duration."""
    cores = len(os.sched_getaffinity(0))
    burners = []
    try:
        for _ in range(cores):
            burners.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield cores
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait(timeout=30)


def test_first_cells_import_the_heavy_stack_while_nbtrack_threads_import(
        tmp_path, store, busy_machine):
    from mlflow import MlflowClient

    journal = tmp_path / "journal"
    base_env = {**os.environ, "NBTRACK_JOURNAL_DIR": str(journal),
                "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    base_env.pop("NBTRACK_WAIT_FOR_STORE", None)
    # Every store starts with MLflow's tables (made once here, copied): kernels open stores,
    # none creates one, and three kernels never create the same one at once.
    template = tmp_path / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
    shutil.copy(template, store[len("sqlite:///"):])
    kernels = plan(base_env, store, tmp_path / "stores", template)
    (tmp_path / "logs").mkdir()
    for kernel in kernels:
        kernel.log = tmp_path / "logs" / f"{kernel.name}.log"
    assert any(k.killed_during for k in kernels) and any(k.away for k in kernels)
    with ThreadPoolExecutor(max_workers=AT_ONCE, thread_name_prefix="kernel") as pool:
        results = list(pool.map(lambda kernel: run_kernel(kernel, Path.cwd()), kernels))

    failures = [failure for result in results for failure in result.failures()]

    # What the last kernels left (runs of ended kernels nobody started after) goes in now.
    synced = nbtrack_cli("sync", env={"NBTRACK_JOURNAL_DIR": str(journal)}, timeout=300)
    if synced.returncode != 0 or IMPORT_TROUBLE.search(synced.stdout + synced.stderr):
        failures.append(f"nbtrack sync, exit code {synced.returncode}:\n"
                        + synced.stdout + synced.stderr)
    failures += [f"kernel {kernel.name}, store: {problem}"
                 for kernel in kernels for problem in not_stored(kernel)]
    failures += [f"journal, {path} left" for path in sorted(journal.glob("*/*"))]
    kernels_failing = {f.split(",")[0] for f in failures if f.startswith("kernel ")}
    assert not failures, (f"{len(failures)} failure(s), in {len(kernels_failing)} of "
                          f"{len(kernels)} kernels:\n\n" + "\n\n".join(failures))


def not_stored(kernel: Kernel) -> list[str]:
    """What the store lacks of ``kernel``'s runs: a run, its final status, its logged model."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=kernel.store)
    experiment = client.get_experiment_by_name(kernel.experiment)
    found, models = [], set()
    if experiment is not None:
        found = client.search_runs([experiment.experiment_id], max_results=1000)
        models = {model.source_run_id for model in client.search_logged_models(
            [experiment.experiment_id], max_results=1000)}
    runs = {run.data.tags["mlflow.runName"]: run for run in found}
    problems = []
    for name, status in kernel.runs.items():
        run = runs.get(name)
        copies = [f"{r.info.run_id} {r.info.status}" for r in found
                  if r.data.tags["mlflow.runName"] == name]
        if len(copies) > 1:
            problems.append(f"run {name} is in the store {len(copies)} times: {copies}")
        elif run is None:
            problems.append(f"run {name} not in {kernel.store}")
        elif run.info.status != status:
            problems.append(f"run {name} is {run.info.status}, not {status}")
        elif name in kernel.models and run.info.run_id not in models:
            problems.append(f"run {name} has no logged model")
    return problems
