"""CPU, memory and GPU while a tracked cell runs, sampled on a thread, as metric series.

Keys are MLflow's own (``mlflow.enable_system_metrics_logging()`` names them so), so the MLflow UI
charts them under "System metrics"; the kernel process's share is added under ``system/process_``.
GPUs are read through NVIDIA's management library (``pynvml``, from ``nvidia-ml-py``) when it is
installed and finds a GPU; without it there are no GPU series, never an error.

The sampling thread imports nothing: psutil (and pynvml) are imported, and a first sample taken,
by :meth:`SystemSampler.start` on the thread that starts the cell.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from nbtrack.record import Series

INTERVAL_SECONDS = 2.0
_MB = 1024 * 1024


class SystemSampler:
    """Samples system metrics every ``interval`` seconds between :meth:`start` and :meth:`stop`.

    A cell shorter than the interval still gets one sample: the one :meth:`stop` takes.
    """

    def __init__(self, interval: float = INTERVAL_SECONDS) -> None:
        self.interval = interval
        self.series: dict[str, Series] = {}
        self.problem: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._steps = 0
        self._psutil: Any = None
        self._process: Any = None
        self._gpus: list[Any] = []
        self._nvml: Any = None

    def start(self) -> None:
        """Import what sampling needs, prime the CPU counters, and start the sampling thread."""
        from nbtrack import threads

        try:
            self._psutil, self._process, self._gpus, self._nvml = _sources()
            # CPU percentages are measured from the previous call.
            self._psutil.cpu_percent(None)
            self._process.cpu_percent(None)
        except Exception as error:  # psutil missing or refused: no system metrics
            self.problem = f"system metrics not sampled: {type(error).__name__}: {error}"
            self._psutil = None
            return
        try:
            self._thread = threads.start("system-metrics", self._run)
        except RuntimeError:  # the interpreter is shutting down: one sample at stop
            self._thread = None

    def stop(self) -> dict[str, Series]:
        """Stop sampling; take the one sample of a cell shorter than the interval."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        if self._psutil is not None and self._steps == 0:
            self._sample()
        return self.series

    def _run(self) -> None:
        from nbtrack.threads import ImportNotNow

        try:
            while not self._stop.wait(self.interval):
                self._sample()
        except ImportNotNow:  # a read that would import while the cell runs: stop sampling
            return

    def _sample(self) -> None:
        now_ms = int(time.time() * 1000)
        try:
            values = self._read()
        except Exception:  # a counter that cannot be read this time: the next sample may
            return
        with self._lock:
            step = self._steps
            self._steps += 1
            for key, value in values.items():
                series = self.series.get(key)
                if series is None:
                    series = self.series[key] = Series(key)
                series.add(float(value), step, now_ms)

    def _read(self) -> dict[str, float]:
        psutil, process = self._psutil, self._process
        memory = psutil.virtual_memory()
        values = {
            "system/cpu_utilization_percentage": psutil.cpu_percent(None),
            "system/system_memory_usage_megabytes": (memory.total - memory.available) / _MB,
            "system/system_memory_usage_percentage": memory.percent,
            "system/process_cpu_utilization_percentage": process.cpu_percent(None),
            "system/process_memory_rss_megabytes": process.memory_info().rss / _MB,
        }
        for index, handle in enumerate(self._gpus):
            values.update(_gpu_values(self._nvml, index, handle))
        return values


_SOURCES: tuple | None = None


def _sources() -> tuple[Any, Any, list[Any], Any]:
    """psutil, this process, the NVIDIA GPUs and their library: found once per process, with a
    first full read on the calling thread (the cell's), so what psutil imports on first use is
    imported then and never by the sampling thread.
    """
    global _SOURCES
    if _SOURCES is None or _SOURCES[1].pid != os.getpid():
        import psutil

        process = psutil.Process(os.getpid())
        gpus, nvml = _nvidia_gpus()
        psutil.virtual_memory()
        process.memory_info()
        for index, handle in enumerate(gpus):
            _gpu_values(nvml, index, handle)
        _SOURCES = (psutil, process, gpus, nvml)
    return _SOURCES


def _nvidia_gpus() -> tuple[list[Any], Any]:
    """The handles of NVIDIA's GPUs and the library reading them; none without either."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)], pynvml
    except Exception:  # no library, no driver, no GPU: no GPU series
        return [], None


def _gpu_values(nvml: Any, index: int, handle: Any) -> dict[str, float]:
    """One GPU's utilisation and memory, under MLflow's names."""
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    usage = nvml.nvmlDeviceGetUtilizationRates(handle)
    return {
        f"system/gpu_{index}_utilization_percentage": usage.gpu,
        f"system/gpu_{index}_memory_usage_megabytes": memory.used / _MB,
        f"system/gpu_{index}_memory_usage_percentage": 100.0 * memory.used / memory.total,
    }
