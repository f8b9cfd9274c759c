"""Every touch of MLflow's process-wide or private state, in one place to read when MLflow changes.

nbtrack writes through ``MlflowClient`` almost everywhere; what is here is the rest: importing
MLflow in the background, the fluent API's active run (opened for a cell's own ``mlflow.log_*``
calls, left without a store call), the experiment the fluent API resumes in, MLflow's loggers and
warnings kept out of the user's cells, the "View run at URL" line a client prints, and one process
at a time opening a new SQLite store.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Mapping
from contextlib import contextmanager

from nbtrack import display, threads
from nbtrack.config import TRACKING_URI_ENV
from nbtrack.display import short_error as _short
from nbtrack.threads import THREAD_PREFIX, warnings_dropped

_OPENING = threading.Lock()


def preload() -> None:
    """Import MLflow on a background thread (it takes seconds), so the first tracked cell does
    not wait for it and loading the extension stays instant. The thread holds the gate
    (:mod:`nbtrack.threads`): a cell that starts meanwhile waits for the import to end.
    """

    def load() -> None:
        quiet_mlflow_threads()  # its import warnings would land in the user's cell
        try:
            import mlflow  # noqa: F401
        except Exception as error:  # the first tracked cell needs it, and says so again
            display.warn(f"MLflow could not be imported: {_short(error)}")
        quiet_mlflow_threads()

    threads.start("import-mlflow", load, gated=True)


def tracking_uri(environ: Mapping[str, str] = os.environ) -> str:
    """The store tracked cells write to now (a relative SQLite path made absolute)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or getattr(mlflow.__spec__, "_initializing", False):
        # MLflow is still being imported in the background (nobody can have called its
        # set_tracking_uri yet): the environment says where, without waiting for it.
        configured = environ.get(TRACKING_URI_ENV)
        if configured:
            return absolute_tracking_uri(configured)
    return absolute_tracking_uri()


def absolute_tracking_uri(uri: str | None = None) -> str:
    """MLflow's tracking URI (or ``uri``) with a relative SQLite path made absolute.

    A kernel runs in its notebook's folder; a relative ``sqlite:///mlflow.db`` would otherwise
    open a different store there than the one the calling process reads.
    """
    import os

    if uri is None:
        import mlflow

        uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri


@contextmanager
def fluent_tracking_uri(uri: str | None):
    """MLflow's fluent API pointed at ``uri`` for a moment (no-op for None), then left as it was:
    its own setting (often none: the environment decides) and ``MLFLOW_TRACKING_URI``, which
    ``mlflow.set_tracking_uri`` sets too. Restoring by ``set_tracking_uri(get_tracking_uri())``
    would pin the URI the environment gave, and a later ``MLFLOW_TRACKING_URI`` would be ignored.
    """
    if not uri:
        yield
        return
    import mlflow
    from mlflow.tracking._tracking_service import utils

    setting, variable = utils._tracking_uri, os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(setting)
        if variable is None:
            os.environ.pop(TRACKING_URI_ENV, None)
        else:
            os.environ[TRACKING_URI_ENV] = variable


def leave_run_of_cell(run_id: str) -> None:
    """The run opened before a cell is MLflow's active run in this thread: leave it, so the
    user's next ``mlflow.start_run()`` is not nested in it. The writer finishes it.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    run = mlflow.active_run()
    if run is not None and run.info.run_id == run_id:
        leave_active_run(run_id)


def leave_active_run(run_id: str) -> None:
    """End MLflow's active run ``run_id`` in this thread the way ``mlflow.end_run()`` does, but
    without its call to the store: the background writer sets the run's status, in order with
    the rest of its record. A store that is down must not hold the cell here, and end_run would
    also print the run's URL into the cell's output.
    """
    from mlflow.environment_variables import MLFLOW_RUN_ID
    from mlflow.tracking import fluent

    stack = getattr(fluent, "_active_run_stack", None)
    last = getattr(fluent, "_last_active_run_id", None)
    if stack is None or last is None:  # an MLflow whose fluent state nbtrack does not know
        import mlflow

        with quiet_mlflow():
            mlflow.end_run()
        return
    runs = stack.get()
    if not runs or runs[-1].info.run_id != run_id:
        return
    MLFLOW_RUN_ID.unset()
    runs.pop()
    last.set(run_id)
    monitor = getattr(fluent, "run_id_to_system_metrics_monitor", {}).pop(run_id, None)
    if monitor is not None:
        monitor.finish()


def without_run_urls(client) -> None:
    """Keep ``client`` from printing "View run ... at: URL" as a run ends on a tracking server:
    from the writer's thread that line would land in whatever cell runs then, and nbtrack's own
    summary line names the run already. Only this client is quieted.
    """
    tracking = getattr(client, "_tracking_client", None)
    if tracking is not None and hasattr(tracking, "_log_url"):
        tracking._log_url = lambda run_id: None


@contextmanager
def store_opening(uri: str):
    """Held while a client opens the store at ``uri``: opening a new SQLite store creates and
    migrates its tables, and two threads (the writer, the recovery of ended kernels) or eight
    kernels of a sweep doing that at once trip over each other.
    """
    with _OPENING, _store_creation_lock(uri):
        yield


@contextmanager
def _store_creation_lock(uri: str):
    """Across processes, one at a time opens a SQLite store: opening a new one creates its
    tables, and eight kernels of a sweep doing that at once make MLflow's migrations collide.
    The lock file lives in the journal root, not beside the user's database.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl
    import hashlib

    from nbtrack.config import journal_root

    try:
        root = journal_root()
        root.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1(uri.encode()).hexdigest()[:16]
        handle = open(root / f".opening-{name}.lock", "a+")  # noqa: SIM115 - the lock itself
    except OSError:  # no journal folder: open without the lock, as MLflow alone would
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()


@contextmanager
def quiet_mlflow():
    """Keep MLflow's own info logs and warnings out of the user's cell output while nbtrack
    writes (what goes wrong is reported by nbtrack, in one line).

    On nbtrack's own threads (the writer, store opening, recovery) nothing global changes, since
    the user's code runs meanwhile: what those threads log or warn is dropped by a filter that
    looks at the thread's name.
    """
    import mlflow  # noqa: F401 - its import sets its loggers' levels: set ours after it

    if threading.current_thread().name.startswith(THREAD_PREFIX):
        quiet_mlflow_threads()
        yield
        return
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings_dropped():  # never catch_warnings alone: see nbtrack.threads
            yield
    finally:
        logger.setLevel(level)


class _NotFromNbtrackThreads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.threadName.startswith(THREAD_PREFIX)


_FILTER = _NotFromNbtrackThreads()


def quiet_mlflow_threads() -> None:
    """Drop MLflow's log records and Python warnings emitted on nbtrack's threads (idempotent)."""
    for handler in logging.getLogger("mlflow").handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    if not getattr(warnings.showwarning, "_nbtrack", False):
        shown = warnings.showwarning

        def showwarning(*args, **kwargs):
            if not threading.current_thread().name.startswith(THREAD_PREFIX):
                shown(*args, **kwargs)

        showwarning._nbtrack = True
        warnings.showwarning = showwarning


@contextmanager
def experiment_of(experiment_id: str):
    """Let MLflow resume a run of ``experiment_id`` although the user's ``mlflow.set_experiment``
    chose another one (MLflow refuses to, then); the user's choice is put back right after.
    """
    from mlflow.tracking import fluent

    chosen = getattr(fluent, "_active_experiment_id", None)
    if chosen is None or chosen == experiment_id:
        yield
        return
    fluent._active_experiment_id = experiment_id
    try:
        yield
    finally:
        fluent._active_experiment_id = chosen


def autologging() -> bool:
    """Whether an ``mlflow.autolog()`` (or a flavor's) is on in this kernel: a tracked cell then
    opens its run as MLflow's active run first, so what autolog logs lands in it, not in a run of
    its own. False while MLflow is not imported (nobody can have turned it on).
    """
    utils = sys.modules.get("mlflow.utils.autologging_utils")
    integrations = getattr(utils, "AUTOLOGGING_INTEGRATIONS", None) or {}
    # An integration MLflow registered but nobody turned on has no "disable" key: it is off.
    return any(config.get("disable", True) is False for config in list(integrations.values()))


def autologged_model_flavors() -> frozenset[str]:
    """The flavors whose models MLflow's autolog logs itself now: nbtrack does not log them twice."""
    utils = sys.modules.get("mlflow.utils.autologging_utils")
    integrations = getattr(utils, "AUTOLOGGING_INTEGRATIONS", None) or {}
    flavors = set()
    for name, config in list(integrations.items()):
        if config.get("disable", True) is False and config.get("log_models", True):
            flavors.add(name)
    return frozenset(flavors)


# scikit-learn vendors array_api_compat with a subpackage per array library; skops' first import
# lists every estimator by walking scikit-learn's packages, which imports those subpackages and,
# through them, torch or cupy when installed: seconds of import, and every later run of the
# kernel would list torch among the packages it used. While nbtrack saves a model, those
# subpackages are not imported for a library the kernel has not imported itself (pkgutil's walk
# skips a package that fails to import; a later import by the user is unaffected).
_VENDORED_ARRAY_API = ("sklearn.externals.array_api_compat.",)
_ARRAY_LIBRARIES = frozenset({"torch", "cupy", "dask", "jax"})


class _UnusedArrayLibraries:
    def find_spec(self, name, path=None, target=None):
        for prefix in _VENDORED_ARRAY_API:
            if name.startswith(prefix):
                library = name[len(prefix):].split(".")[0]
                if library in _ARRAY_LIBRARIES and library not in sys.modules:
                    raise ImportError(f"{name} is not imported while nbtrack saves a model")
        return None


@contextmanager
def unused_array_libraries_left_alone():
    """While a model is saved: do not import array libraries the kernel has not (see above)."""
    finder = _UnusedArrayLibraries()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
