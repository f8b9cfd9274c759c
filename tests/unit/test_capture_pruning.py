"""The channel between a search's trial kernel and nbtrack run (nbtrack/capture/pruning.py)."""

from __future__ import annotations

import pytest

from nbtrack.capture.pruning import PruneChannel, TrialPruned, prepare, prune, read_reported


def test_points_reach_the_driver_once_each_and_a_half_written_line_waits(tmp_path):
    folder = prepare(tmp_path / "trial-000")
    channel = PruneChannel.from_environ({"NBTRACK_PRUNE_FOLDER": str(folder),
                                         "NBTRACK_OBJECTIVE": "val_auc"})
    channel.report(0, 0.5)
    channel.report(1, 0.625)
    points, offset = read_reported(folder, 0)
    assert points == [(0, 0.5), (1, 0.625)]
    with open(folder / "reported.tsv", "a") as reported:
        reported.write("2\t0.7")  # the kernel has not finished this line yet
    assert read_reported(folder, offset) == ([], offset)
    with open(folder / "reported.tsv", "a") as reported:
        reported.write("5\n")
    assert read_reported(folder, offset)[0] == [(2, 0.75)]


def test_the_next_point_after_the_word_to_prune_raises_in_the_cell(tmp_path):
    folder = prepare(tmp_path / "trial-001")
    channel = PruneChannel(folder, "loss")
    channel.report(0, 1.0)
    prune(folder)
    with pytest.raises(TrialPruned, match="pruned this trial at step 1: its loss"):
        channel.report(1, 0.9)
    assert prepare(folder) == folder and not (folder / "prune").exists()  # a fresh channel


def test_no_channel_without_both_variables():
    assert PruneChannel.from_environ({}) is None
    assert PruneChannel.from_environ({"NBTRACK_OBJECTIVE": "auc"}) is None
