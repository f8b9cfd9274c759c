"""The typed values that flow between the rooms, and the tags nbtrack writes.

What ``%%track`` was asked (:class:`TrackOptions`) about which cell (:class:`CellContext`); the
:class:`CellRecord` one tracked cell yields, built by capture from the live namespace and turned into
MLflow calls by the recorder; and :class:`RunFacts`, what a recorded run says about itself, which
reproduce and diff work from. Nothing here imports MLflow or IPython.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"


@dataclass
class Series:
    """The points of one metric logged with ``nbtrack.log_metric``, in the order they came.

    Kept as typed arrays (8 bytes a number) rather than an object per point, so a training loop
    can log millions of points cheaply.
    """

    key: str
    steps: array = field(default_factory=lambda: array("q"))
    values: array = field(default_factory=lambda: array("d"))
    timestamps_ms: array = field(default_factory=lambda: array("q"))

    def add(self, value: float, step: int, timestamp_ms: int) -> None:
        """Append one point."""
        self.steps.append(step)
        self.values.append(value)
        self.timestamps_ms.append(timestamp_ms)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Artifact:
    """A file to store under the run's artifacts, at ``path`` (relative, '/'-separated)."""

    path: str
    content: bytes


@dataclass(frozen=True)
class FigureSnapshot:
    """A figure the cell opened and never displayed, to store as a PNG at ``path``.

    The figure is pickled when the cell ends (a copy, as it looked then, costing a few
    milliseconds) and drawn to PNG by the recorder, off the cell's time: drawing even a small figure
    takes tens of milliseconds. ``dpi`` is the resolution to draw it at (None: the figure's own).
    """

    path: str
    pickled_figure: bytes
    dpi: float | None = None


@dataclass(frozen=True)
class ModelCapture:
    """A trained model the cell bound or trained, with a small sample of its input.

    ``estimator`` is the live object: the recorder serializes it with the MLflow ``flavor`` named
    (sklearn, xgboost, lightgbm, catboost, pytorch, keras, transformers).
    """

    name: str
    estimator: Any
    input_example: Any = None
    flavor: str = "sklearn"
    tokenizer: Any = None  # a Hugging Face tokenizer or processor (transformers flavor)
    serve_logits: bool = False  # a Hugging Face model: pyfunc returns its logits
    note: str = ""  # why this flavor, when it is a fallback: shown in the summary line


@dataclass(frozen=True)
class DataCapture:
    """A DataFrame or array the cell read or bound; the recorder logs it as a dataset input."""

    name: str
    data: Any
    context: str  # "read" or "bound"


@dataclass(frozen=True)
class CellRecord:
    """Everything one execution of a tracked cell yields, ready to be written as one MLflow run."""

    experiment: str
    run_name: str
    start_time_ms: int
    end_time_ms: int
    status: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    series: tuple[Series, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: tuple[Artifact | FigureSnapshot, ...] = ()
    models: tuple[ModelCapture, ...] = ()
    datasets: tuple[DataCapture, ...] = ()
    register_as: str | None = None
    # Set when the run was opened before the cell ran, so the cell's own mlflow.log_* calls land in it.
    run_id: str | None = None

    def summary_counts(self) -> dict[str, int]:
        """Count what the run holds, for the one-line summary after the cell."""
        figures = sum(1 for a in self.artifacts if a.path.startswith("figures/"))
        return {
            "params": len(self.params),
            # System metrics (system/...) are the machine's, not the cell's: not counted.
            "metrics": len(self.metrics) + len({s.key for s in self.series
                                                if not s.key.startswith(SYSTEM_PREFIX)}
                                               - set(self.metrics)),
            "figures": figures,
            "models": len(self.models),
            "datasets": len(self.datasets),
        }


@dataclass(frozen=True)
class RunOutcome:
    """What the recorder did with a record: the run it wrote and what it could not write."""

    run_id: str | None
    experiment: str
    tracking_uri: str
    model_uris: dict[str, str] = field(default_factory=dict)
    registered: str | None = None  # "name vN"
    problems: tuple[str, ...] = ()
    # The store refused part of the run for now (down, locked, not writable): write it again later.
    retry: bool = False


@dataclass(frozen=True)
class TrackOptions:
    """What ``%%track`` was asked to do (see ``%%track?``)."""

    experiment: str | None = None
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    figures: bool = True
    model: bool = True
    register: str | None = None
    live: bool | None = None  # the live panel: None follows Nbtrack.live


@dataclass(frozen=True)
class CellContext:
    """What the shell knows about the cell about to run."""

    raw_source: str
    code: str  # the cell body as Python (IPython syntax already transformed)
    execution_count: int | None = None
    cell_id: str | None = None
    history: tuple[tuple[int, str], ...] = ()  # earlier inputs of this kernel, in order
    cwd: Path = field(default_factory=Path.cwd)


# -- what a recorded run says about itself: what reproduce and diff work from --------------
# (nbtrack.store.query.run_facts reads one from the store)

VERSION_TAG = "nbtrack.version."
GIT_COMMIT_TAG = "mlflow.source.git.commit"


@dataclass(frozen=True)
class DatasetRef:
    """A dataset input of a run: its name, digest, and how the cell used it (read or bound)."""

    name: str
    digest: str
    context: str = ""
    profile: str = ""  # MLflow's profile of it, e.g. '{"num_rows": 426, ...}'


@dataclass(frozen=True)
class RunFacts:
    """One run's params, metrics, tags, data and lineage artifacts."""

    run_id: str
    name: str
    experiment: str
    status: str
    # Its lineage artifacts: what reproduce rebuilds from.
    source: str | None = None  # cell/source.py
    history: str | None = None  # lineage/history.py
    notebook: bytes | None = None  # lineage/<notebook>.ipynb, the notebook as saved
    # What it recorded: what diff compares.
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    datasets: tuple[DatasetRef, ...] = ()

    @property
    def notebook_path(self) -> str | None:
        """The notebook the run came from, as recorded (None when run outside one)."""
        path = self.tags.get("nbtrack.notebook")
        return None if path in (None, "", "<ipython>") else path

    @property
    def git_commit(self) -> str | None:
        """The commit of the notebook's repository when the run was made."""
        return self.tags.get(GIT_COMMIT_TAG)

    @property
    def versions(self) -> dict[str, str]:
        """Python and package versions the run was made with: ``{"scikit-learn": "1.5.2"}``."""
        return {k[len(VERSION_TAG):]: v for k, v in self.tags.items() if k.startswith(VERSION_TAG)}

    @property
    def digests(self) -> dict[str, str]:
        """Dataset name to digest."""
        return {d.name: d.digest for d in self.datasets}


# The tags nbtrack writes on a run, besides MLflow's own (mlflow.*).
NOTEBOOK_TAG = "nbtrack.notebook"
EXECUTION_TAG = "nbtrack.execution"
CELL_TAG = "nbtrack.cell"
BATCH_TAG = "nbtrack.batch"
SWEEP_TAG = "nbtrack.sweep"
TRIAL_TAG = "nbtrack.trial"
PRUNED_TAG = "nbtrack.pruned"  # "true" on the run of a cell a search pruned (--prune)
PARENT_RUN_TAG = "mlflow.parentRunId"
SUPERSEDES_TAG = "nbtrack.supersedes"
KILLED_REASON_TAG = "nbtrack.killed_reason"
HIDDEN_STATE_TAG = "nbtrack.hidden_state"
EXECUTION_COUNT_TAG = "nbtrack.execution_count"
REPRODUCTION_OF_TAG = "nbtrack.reproduction_of"
REPRODUCES_TAG = "nbtrack.reproduces"
GIT_DIRTY_TAG = "nbtrack.git.dirty"
GIT_BRANCH_TAG = "nbtrack.git.branch"
ERROR_TAG = "nbtrack.error"
CELL_ID_TAG = "nbtrack.cell_id"
CAPTURE_TAG = "nbtrack.capture"
SYSTEM_PREFIX = "system/"  # MLflow's prefix for system metrics (CPU, memory, GPU)
# The params that came from earlier cells the tracked cell's inputs were made from.
UPSTREAM_TAG = "nbtrack.upstream_params"
