"""What a recorded run says about itself, as a plain value: what reproduce and diff work from.

:func:`nbtrack.store.query.run_facts` reads one from the store; nothing here imports MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    datasets: tuple[DatasetRef, ...] = ()
    source: str | None = None  # cell/source.py
    history: str | None = None  # lineage/history.py
    notebook: bytes | None = None  # lineage/<notebook>.ipynb, the notebook as saved

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
