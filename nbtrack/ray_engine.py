"""Running a sweep's executions as tasks on a Ray cluster (``nbtrack run --engine ray``).

Each execution is one Ray task with its CPU and GPU request. The task runs the notebook with
papermill in a Ray worker, as a local worker does (:func:`nbtrack.batch._execute_in_worker`), from
a copy of the notebook sent with the task, and sends the executed notebook back: the driver writes
it where a local sweep would and records it with the runs. The kernel runs in the notebook's folder
when the worker's machine has it (this machine, or a shared file system), else in a temporary one.

The runs go to the tracking store the driver names, so the workers must reach it: a team server
(``MLFLOW_TRACKING_URI``, forwarded with every ``MLFLOW_*`` and ``NBTRACK_*`` variable), or a
SQLite file on a file system every machine shares. ``--prune`` needs that shared file system too:
the kernels report their points to a folder of the driver's. A worker that dies mid-execution
(killed, out of memory, its machine lost) ends the execution KILLED, as a killed kernel does, and
``--retries`` runs it again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from nbtrack.batch import _EXIT_FAILED, _EXIT_KILLED, Execution, _execute_in_worker, request_for
from nbtrack.errors import BadOptionError, NbtrackError

FORWARDED_PREFIXES = ("MLFLOW_", "NBTRACK_")  # where the runs go, and how nbtrack behaves
# Ray's errors for a task whose worker process or machine went away mid-task: KILLED, retried.
WORKER_LOST = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError",
               "ObjectLostError", "OwnerDiedError")


class RayEngine:
    """The engine of :func:`nbtrack.batch.run_sweep` that runs each execution as a Ray task.

    Parameters
    ----------
    address : str, optional
        The cluster: ``auto`` (the one ``ray start`` began on this machine), ``HOST:PORT``, or
        ``ray://HOST:10001`` (Ray Client). None does what ``ray.init()`` does: ``RAY_ADDRESS``,
        else a cluster running here, else a new one on this machine for this command only.
    cpus, gpus : float
        What each execution asks of the cluster (``--cpus-per-trial``, ``--gpus-per-trial``).

    Raises
    ------
    BadOptionError
        When Ray is not installed, or no machine of the cluster can hold one execution.
    NbtrackError
        When the cluster cannot be reached.

    """

    def __init__(self, address: str | None = None, cpus: float = 1.0, gpus: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            raise BadOptionError("--engine ray needs Ray, which is not installed here: "
                                 "pip install 'nbtrack[ray]'.") from None
        self._ray = ray
        self.cpus, self.gpus = cpus, gpus
        if not ray.is_initialized():
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            except Exception as error:
                raise NbtrackError(
                    f"--engine ray: cannot reach the Ray cluster at {address or 'auto'}: "
                    f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
                    "Start one with `ray start --head`, or name it with --address.") from None
        self._check_fits()
        self._task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_execute_on_worker)

    def _check_fits(self) -> None:
        """Refuse a request no machine of the cluster can meet: Ray would wait for it forever."""
        nodes = [node.get("Resources", {}) for node in self._ray.nodes() if node.get("Alive")]
        if any(node.get("CPU", 0) >= self.cpus and node.get("GPU", 0) >= self.gpus
               for node in nodes):
            return
        most_cpus = max((node.get("CPU", 0) for node in nodes), default=0)
        most_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
        raise BadOptionError(
            f"--cpus-per-trial {self.cpus:g} --gpus-per-trial {self.gpus:g}: no machine of the "
            f"Ray cluster has that much (the most on one: {most_cpus:g} CPUs, {most_gpus:g} "
            "GPUs). Ask for less, or add a machine with `ray start --address ...`.")

    def capacity(self) -> int:
        """How many executions the cluster runs at once with this request (at least 1)."""
        fits = 0
        for node in self._ray.nodes():
            if not node.get("Alive"):
                continue
            resources = node.get("Resources", {})
            by_cpu = int(resources.get("CPU", 0) // self.cpus) if self.cpus else 1 << 20
            by_gpu = int(resources.get("GPU", 0) // self.gpus) if self.gpus else 1 << 20
            fits += min(by_cpu, by_gpu)
        return max(1, fits)

    def __call__(self, execution: Execution, environment: dict) -> tuple[int, str]:
        """Run ``execution`` as a task; write its executed notebook here; its exit code and why."""
        ray = self._ray
        forwarded = {key: value for key, value in os.environ.items()
                     if key.startswith(FORWARDED_PREFIXES)}
        task = self._task.remote(request_for(execution), execution.notebook.read_bytes(),
                                 {**forwarded, **environment})
        try:
            code, reason, executed = ray.get(task)
        except ray.exceptions.RayError as error:
            lost = type(error).__name__ in WORKER_LOST or isinstance(
                getattr(error, "cause", None), ray.exceptions.RayError)
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            if lost:
                return _EXIT_KILLED, f"its Ray worker died ({type(error).__name__}: {first_line})"
            return _EXIT_FAILED, f"its Ray task failed ({type(error).__name__}: {first_line})"
        if executed is not None:
            execution.output.write_bytes(executed)
        return code, reason


def _execute_on_worker(request: dict, notebook: bytes, environment: dict) -> tuple[int, str,
                                                                                    bytes | None]:
    """A Ray task: run one execution in this worker from the notebook's bytes; its exit code,
    why it failed, and the executed notebook's bytes (None when papermill wrote none).
    """
    folder = Path(tempfile.mkdtemp(prefix="nbtrack-ray-"))
    try:
        original = Path(request["notebook"])
        copy = folder / original.name
        copy.write_bytes(notebook)
        output = folder / "executed" / original.name
        output.parent.mkdir()
        cwd = request.get("cwd") or str(original.parent)
        environment = dict(environment)
        if not original.is_file():  # another machine: lineage reads the copy
            environment["JPY_SESSION_NAME"] = str(copy)
        code, reason = _execute_in_worker(
            {**request, "notebook": str(copy), "output": str(output),
             "cwd": cwd if Path(cwd).is_dir() else str(folder)},
            {**os.environ, **environment})
        return code, reason, (output.read_bytes() if output.is_file() else None)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
