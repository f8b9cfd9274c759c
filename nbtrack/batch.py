"""Executing notebooks headless, tracked like interactive ones: one execution or a parameter sweep.

papermill injects parameters after the notebook's ``parameters`` cell and drives nbclient. Each
execution runs in a worker process, one execution at a time each, so that executions run side by
side (``-j``) with their own environment and a kernel that dies takes only its own execution with
it. The workers are kept from one execution to the next: a new process for each would import
papermill each time (2-3 s of CPU, most of it jsonschema's format checkers, which nbformat loads),
as long as a tiny notebook's whole execution. The kernel is the one the notebook's kernelspec names
(or ``-k``), checked before anything runs.
"""

from __future__ import annotations

import ast
import itertools
import json
import multiprocessing
import os
import re
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nbtrack.config import (
    BATCH_ENV,
    EXECUTION_ID_ENV,
    EXPERIMENT_NAME_ENV,
    OBJECTIVE_ENV,
    PARAMETERS_ENV,
    PARENT_RUN_ENV,
    PRUNE_FOLDER_ENV,
    SWEEP_ID_ENV,
    TRACKING_URI_ENV,
    TRIAL_ENV,
)
from nbtrack.errors import BadOptionError, NbtrackError, NotebookError

OK, FAILED, KILLED, PRUNED = "ok", "FAILED", "KILLED", "PRUNED"
_EXIT_FAILED, _EXIT_KILLED, _EXIT_PRUNED = 1, 3, 4
# How long a starting kernel may take to answer. papermill's 60 s is too short for eight kernels
# starting at once on two busy cores (seen: "Kernel didn't respond in 60 seconds"); a kernel
# that dies while starting is reported at once whatever this is.
KERNEL_START_SECONDS = 300
# How many times a kernel that died before answering is started again. Kernels started at once
# can pick the same free port (jupyter_client finds one, frees it, and the kernel binds it later),
# and the loser dies at once; none of the notebook has run then, so starting it again is safe.
KERNEL_START_ATTEMPTS = 3
_DIED_STARTING = "Kernel died before replying to kernel_info"


def parse_value(text: str):
    """A parameter value as papermill would inject it: a Python literal if it is one, else text.

    >>> parse_value("0.1"), parse_value("[1, 2]"), parse_value("lbfgs")
    (0.1, [1, 2], 'lbfgs')
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    """Split ``KEY=VALUE``; the key must be a Python name."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise BadOptionError(f"{option} takes NAME=VALUE with NAME a Python name, got {text!r}.")
    return key, value


def sweep_points(parameters: list[str], grid: list[str]) -> list[dict]:
    """The executions of a sweep: every point of the grid's cross product, plus the fixed values.

    >>> sweep_points(["seed=1"], ["C=0.1,1"])
    [{'seed': 1, 'C': 0.1}, {'seed': 1, 'C': 1}]
    """
    fixed = {}
    for text in parameters:
        key, value = parse_assignment(text, "-p")
        fixed[key] = parse_value(value)
    axes: dict[str, list] = {}
    for text in grid:
        key, values = parse_assignment(text, "--grid")
        items = [v.strip() for v in values.split(",")]
        if not values.strip() or any(not v for v in items):
            raise BadOptionError(f"--grid takes NAME=V1,V2,... with no empty value, got {text!r}.")
        axes[key] = [parse_value(v) for v in items]
    if not axes:
        return [fixed]
    names = list(axes)
    return [{**fixed, **dict(zip(names, combo, strict=False))} for combo in itertools.product(*axes.values())]


def notebook_parameters(notebook: Path) -> set[str] | None:
    """Names the notebook's ``parameters`` cell defines, or None when it has no such cell."""
    from nbtrack.capture.notebook import read

    parsed = read(notebook)
    for cell in parsed.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:
                return set()
            return {
                target.id
                for node in ast.walk(tree)
                if isinstance(node, (ast.Assign, ast.AnnAssign))
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(target, ast.Name)
            }
    return None


def check_notebook(notebook: Path, parameter_names: set[str]) -> list[str]:
    """Check a notebook before a sweep; return warnings (unknown parameter names).

    Raises NotebookError when it is missing, unreadable, or has no ``parameters`` cell while
    parameters are given.
    """
    if not notebook.is_file():
        raise NotebookError(f"notebook {str(notebook)!r} not found.")
    try:
        defined = notebook_parameters(notebook)
    except Exception as error:
        raise NotebookError(f"notebook {str(notebook)!r} cannot be read: {error}") from None
    if not parameter_names:
        return []
    if defined is None:
        raise NotebookError(
            f"notebook {str(notebook)!r} has no cell tagged 'parameters', so -p/--grid values "
            "have nowhere to go. Tag the cell that sets the defaults (View > Cell Toolbar > Tags "
            "in Jupyter) and try again."
        )
    return [
        f"parameter {name!r} is not set in the notebook's parameters cell; it is injected anyway."
        for name in sorted(parameter_names - defined)
    ]


@dataclass(frozen=True)
class Kernel:
    """The kernel an execution runs on, and the language papermill writes injected values in."""

    name: str
    language: str | None  # None: papermill reads it from the notebook's metadata


def choose_kernel(notebook: Path, name: str | None = None) -> Kernel:
    """The installed kernel to execute ``notebook`` on, as papermill and nbconvert pick it.

    Parameters
    ----------
    notebook : Path
        The notebook; its ``metadata.kernelspec.name`` names the kernel unless ``name`` does.
        A notebook without one (written by a script, converted by a tool) runs on the default
        Python kernel, ``python3``, as ``jupyter nbconvert --execute`` does.
    name : str, optional
        A kernel that overrides the notebook's (``nbtrack run -k NAME``).

    Returns
    -------
    Kernel
        Its name, and its language from its kernelspec: papermill needs a language to inject
        parameters, and a notebook without ``language_info`` has none of its own.

    Raises
    ------
    BadOptionError, NotebookError
        When the kernel ``name`` or the notebook names is not installed; the message lists the
        installed kernels.

    Examples
    --------
    >>> choose_kernel(Path("train.ipynb"), "python3")  # doctest: +SKIP
    Kernel(name='python3', language='python')

    """
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager, NoSuchKernel

    from nbtrack.capture.notebook import read

    kernelspec = read(notebook).metadata.get("kernelspec") or {}
    chosen = name or kernelspec.get("name") or NATIVE_KERNEL_NAME
    specs = KernelSpecManager()
    installed = sorted(specs.find_kernel_specs())  # names in lower case, as Jupyter matches them
    try:
        spec = specs.get_kernel_spec(chosen) if chosen.lower() in installed else None
    except NoSuchKernel:  # installed, but its provisioner is not
        spec = None
    if spec is None:
        listed = ", ".join(installed) or "none"
        if name:
            raise BadOptionError(f"-k/--kernel: no kernel named {chosen!r} is installed; "
                                 f"installed kernels: {listed}.")
        raise NotebookError(
            f"notebook {str(notebook)!r} asks for kernel {chosen!r} (its kernelspec), which is not "
            f"installed; installed kernels: {listed}. Pick one with -k NAME, or install it.")
    return Kernel(chosen, spec.language or None)


@dataclass(frozen=True)
class Execution:
    """One execution of a sweep."""

    notebook: Path
    output: Path
    parameters: dict
    experiment: str
    sweep_id: str
    execution_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    cwd: Path | None = None  # where the kernel runs; default: the notebook's folder
    kernel: Kernel | None = None  # default: choose_kernel(notebook), in the execution's process
    trial: int | None = None  # the Optuna trial it is (nbtrack run --search)
    parent_run: str | None = None  # the sweep's parent run, whose children its runs are
    prune_folder: Path | None = None  # --prune: where its kernel reports the objective's points
    objective: str | None = None  # --prune: the metric it reports


@dataclass(frozen=True)
class ExecutionResult:
    """How an execution ended: ``ok``, ``FAILED``, ``KILLED`` or ``PRUNED`` (by a search), with
    a one-line reason (for ``ok``: what nbtrack could not do afterwards, if anything).
    """

    execution: Execution
    status: str
    reason: str = ""


def plan(notebook: Path, points: list[dict], outdir: Path, experiment: str,
         kernel: Kernel | None = None, sweep_id: str | None = None,
         parent_run: str | None = None) -> list[Execution]:
    """Name the executions of a sweep, the kernel they run on and where their executed notebooks
    go.
    """
    sweep_id = sweep_id or uuid.uuid4().hex[:12]
    executions = []
    for index, point in enumerate(points, start=1):
        label = "-".join(f"{k}={v}" for k, v in point.items())
        label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)[:80]
        name = f"{notebook.stem}-{index:02d}" + (f"-{label}" if label else "") + ".ipynb"
        executions.append(Execution(notebook, outdir / name, point, experiment, sweep_id,
                                    kernel=kernel, parent_run=parent_run))
    return executions


def kernel_environment(execution: Execution, tracking_uri: str) -> dict[str, str]:
    """What the execution's kernel is told: which notebook it runs, that it is a batch run, its
    injected parameters, and where runs go.
    """
    extra = {TRIAL_ENV: str(execution.trial)} if execution.trial is not None else {}
    if execution.parent_run:
        extra[PARENT_RUN_ENV] = execution.parent_run
    if execution.prune_folder is not None and execution.objective:
        extra[PRUNE_FOLDER_ENV] = str(execution.prune_folder)
        extra[OBJECTIVE_ENV] = execution.objective
    return {
        **extra,
        "JPY_SESSION_NAME": str(execution.notebook.resolve()),
        BATCH_ENV: "nbtrack run",
        SWEEP_ID_ENV: execution.sweep_id,
        EXECUTION_ID_ENV: execution.execution_id,
        PARAMETERS_ENV: json.dumps(execution.parameters, default=str),
        TRACKING_URI_ENV: tracking_uri,
        EXPERIMENT_NAME_ENV: execution.experiment,
    }


def run_sweep(executions: list[Execution], jobs: int = 1, progress: bool = True,
              on_done: Callable[[ExecutionResult], None] | None = None, retries: int = 0,
              engine: Callable[[Execution, dict], tuple[int, str]] | None = None,
              ) -> list[ExecutionResult]:
    """Run executions, up to ``jobs`` at once; return how each ended.

    ``engine(execution, environment)`` runs one execution to its end and returns its exit code
    (0 or ``_EXIT_*``) and why it failed; the default runs it in this machine's worker processes,
    :class:`nbtrack.ray_engine.RayEngine` as a task on a Ray cluster. An execution whose kernel or
    worker was killed is run again, under a new execution id, up to ``retries`` times.
    """
    from tqdm.auto import tqdm

    from nbtrack.store.kernel_state import absolute_tracking_uri

    tracking_uri = absolute_tracking_uri()
    engine = engine or LocalEngine(max(1, jobs))
    results: list[ExecutionResult] = []
    with tqdm(total=len(executions), desc="executions", unit="nb", disable=not progress,
              file=sys.stderr) as bar, ThreadPoolExecutor(
                  max_workers=max(1, jobs), thread_name_prefix="nbtrack-execution") as pool:
        futures = [pool.submit(_execute, e, tracking_uri, engine, retries) for e in executions]
        for future in futures:
            result = future.result()
            results.append(result)
            bar.update(1)
            if on_done is not None:
                on_done(result)
    return results


def _execute(execution: Execution, tracking_uri: str,
             engine: Callable[[Execution, dict], tuple[int, str]],
             retries: int) -> ExecutionResult:
    """Run one execution with ``engine``, then record its end in the store; run it again while
    it was KILLED and retries are left. The result says what the killed attempts were.
    """
    from dataclasses import replace

    from nbtrack.execution_record import after_execution

    killed: list[str] = []
    while True:
        execution.output.parent.mkdir(parents=True, exist_ok=True)
        code, reason = engine(execution, kernel_environment(execution, tracking_uri))
        status = {0: OK, _EXIT_KILLED: KILLED, _EXIT_PRUNED: PRUNED}.get(code, FAILED)
        if status != OK and not reason:
            reason = f"exit code {code}"
        reason, notes = after_execution(execution, tracking_uri, status, reason)
        if status != KILLED or len(killed) >= retries:
            break
        killed.append(reason)
        execution = replace(execution, execution_id=uuid.uuid4().hex[:12])
    if killed:
        notes.insert(0, f"run {len(killed) + 1} times: " + "; ".join(
            f"attempt {number} KILLED ({why})" for number, why in enumerate(killed, start=1)))
    if status == OK:
        return ExecutionResult(execution, OK, "; ".join(notes))
    return ExecutionResult(execution, status, "; ".join([reason, *notes]))


def request_for(execution: Execution) -> dict:
    """What a worker needs to run an execution (see _execute_in_worker), in plain values."""
    return {
        "notebook": str(execution.notebook), "output": str(execution.output),
        "parameters": execution.parameters, "execution_id": execution.execution_id,
        "experiment": execution.experiment,
        "cwd": str(execution.cwd) if execution.cwd is not None else None,
        "kernel": asdict(execution.kernel) if execution.kernel is not None else None,
    }


_pool: tuple[int, ProcessPoolExecutor] | None = None  # this process's workers, and how many
_pool_lock = threading.Lock()


def _workers(jobs: int) -> ProcessPoolExecutor:
    """The worker processes executions run in, started once for as many executions as come."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != jobs:
            if _pool is not None:
                _pool[1].shutdown(wait=False)
            # Spawned, not forked: this process has threads (progress, the pool's, a pruner's).
            _pool = jobs, ProcessPoolExecutor(max_workers=jobs, initializer=_quiet,
                                              mp_context=multiprocessing.get_context("spawn"))
        return _pool[1]


def warm_workers(jobs: int) -> None:
    """Start the worker processes now, and their import of papermill, while this process sets
    the sweep up (its own imports, the store, the sweep's parent run): on two cores that is a
    few seconds the first executions no longer wait for.
    """
    pool = _workers(max(1, jobs))
    for _ in range(max(1, jobs)):
        pool.submit(_warm)


def _warm() -> None:
    import papermill  # noqa: F401


def _quiet() -> None:
    """A worker's and its kernels' own output is not the sweep's: why an execution failed comes
    back as its result.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


@dataclass(frozen=True)
class LocalEngine:
    """The default engine: ``jobs`` worker processes on this machine, kept between executions."""

    jobs: int = 1

    def __call__(self, execution: Execution, environment: dict) -> tuple[int, str]:
        """Run ``execution`` in a worker, its kernel started with ``environment`` added."""
        global _pool
        workers = _workers(self.jobs)
        try:
            return workers.submit(_execute_in_worker, request_for(execution),
                                  {**os.environ, **environment}).result()
        except BrokenProcessPool:
            # A worker was killed, and the pool ended the others' executions with it: those
            # executions are KILLED, the next ones get new workers.
            with _pool_lock:
                if _pool is not None and _pool[1] is workers:
                    _pool = None
            return _EXIT_KILLED, "the process executing it died"


def _execute_in_worker(request: dict, env: dict[str, str]) -> tuple[int, str]:
    """Execute one notebook in a worker process (see run_sweep) with ``env`` as the environment
    its kernel starts with; its exit code (0, or _EXIT_*) and why it failed, if it did.
    """
    import logging

    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    logging.getLogger("papermill").setLevel(logging.ERROR)  # e.g. "unknown parameter": checked
    notebook = Path(request["notebook"])
    output = Path(request["output"])
    code, reason = 0, ""
    before = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # jupyter_client starts the kernel with this process's environment
    try:
        kernel = (Kernel(**request["kernel"]) if request.get("kernel")
                  else choose_kernel(notebook))
        for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
            try:
                papermill.execute_notebook(
                    str(notebook), str(output), parameters=request["parameters"],
                    kernel_name=kernel.name, language=kernel.language,
                    cwd=request.get("cwd") or str(notebook.resolve().parent),
                    progress_bar=False, start_timeout=KERNEL_START_SECONDS,
                )
                break
            except RuntimeError as error:
                if _DIED_STARTING not in str(error) or attempt == KERNEL_START_ATTEMPTS:
                    raise
    except NbtrackError as error:  # the notebook's kernel is not installed
        code = _EXIT_FAILED
        reason = str(error)
    except PapermillExecutionError as error:
        # A search's pruner stopped it (nbtrack/capture/pruning.py): pruned, not failed.
        code = _EXIT_PRUNED if error.ename == "TrialPruned" else _EXIT_FAILED
        reason = f"cell {error.exec_count} raised {error.ename}: {error.evalue}"
    except DeadKernelError as error:
        code = _EXIT_KILLED
        reason = f"the kernel died: {error}"
    except Exception as error:  # kernel failed to start, notebook unreadable, ...
        code = _EXIT_FAILED
        reason = f"{type(error).__name__}: {error}"
    os.environ.clear()  # the next execution's environment is all its own
    os.environ.update(before)
    return code, reason.replace("\n", " ")
