"""Pruning a search's trial from inside its kernel (``nbtrack run --search ... --prune``).

The two sides share a folder per execution, named by ``NBTRACK_PRUNE_FOLDER``. In the kernel,
each point of the objective (``NBTRACK_OBJECTIVE``) a tracked cell logs with
``nbtrack.log_metric``, or a framework reports while it trains (a Keras epoch's ``val_loss``, a
Hugging Face ``eval_loss``, Lightning's ``self.log``), is appended to ``reported.tsv`` there;
``nbtrack run`` reads them, reports them to the Optuna trial, and writes the file ``prune`` when
Optuna's pruner says the trial is worse than the earlier ones at that step. The next point the
cell logs (or the framework reports) then raises :class:`TrialPruned` in the cell, as
``raise optuna.TrialPruned()`` would in a hand-written objective: the cell stops, its run ends
KILLED with the points logged so far, and the execution stops there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from nbtrack.config import OBJECTIVE_ENV, PRUNE_FOLDER_ENV

REPORTED = "reported.tsv"  # one "step<TAB>value" line per point of the objective
PRUNE = "prune"  # present once the search prunes the trial


class TrialPruned(Exception):
    """The search pruned this trial: its objective so far is worse than earlier trials'."""


class PruneChannel:
    """The kernel's side: report the objective's points, stop the cell once pruned."""

    def __init__(self, folder: Path, objective: str) -> None:
        self.folder = folder
        self.objective = objective
        self._signal = folder / PRUNE
        self._sent: dict[str, int] = {}  # points of each framework curve passed on so far

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> PruneChannel | None:
        """The channel ``nbtrack run --prune`` set up for this kernel, or None."""
        folder, objective = environ.get(PRUNE_FOLDER_ENV), environ.get(OBJECTIVE_ENV)
        return cls(Path(folder), objective) if folder and objective else None

    def report_curve(self, source: str, steps: Sequence[int], values: Sequence[float]) -> None:
        """Pass on the points of a framework's curve of the objective (``source`` names the
        curve) that were not passed on yet; raise TrialPruned if the search pruned the trial.
        """
        sent = self._sent.get(source, 0)
        for index in range(sent, min(len(steps), len(values))):
            self._sent[source] = index + 1
            self.report(int(steps[index]), float(values[index]))

    def report(self, step: int, value: float) -> None:
        """Pass one point of the objective on; raise TrialPruned if the search pruned the trial."""
        if self._signal.exists():
            raise TrialPruned(f"the search pruned this trial at step {step}: its {self.objective} "
                              "so far is worse than the median of earlier trials at that step")
        with open(self.folder / REPORTED, "a") as reported:
            reported.write(f"{step}\t{value!r}\n")


def read_reported(folder: Path, offset: int) -> tuple[list[tuple[int, float]], int]:
    """The driver's side: points reported since ``offset`` (bytes read so far); a last line not
    yet written whole waits for the next read. Returns the points and the new offset.
    """
    try:
        with open(folder / REPORTED, "rb") as reported:
            reported.seek(offset)
            data = reported.read()
    except FileNotFoundError:
        return [], offset
    whole = data[:data.rfind(b"\n") + 1]
    points = []
    for line in whole.decode().splitlines():
        step, value = line.split("\t")
        points.append((int(step), float(value)))
    return points, offset + len(whole)


def prune(folder: Path) -> None:
    """Tell the trial's kernel to stop at the next point it reports."""
    (folder / PRUNE).touch()


def prepare(folder: Path) -> Path:
    """A fresh, empty channel folder for one execution."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (REPORTED, PRUNE):
        if (folder / name).exists():
            os.remove(folder / name)
    return folder
