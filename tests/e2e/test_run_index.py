"""The run index answers the board's questions as MLflow does, and keeps up with the store:
runs started, finished, deleted, restored or logged by another process; a lost or broken index
file is rebuilt from MLflow. Real SQLite stores, no timing asserts."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag, ViewType

from nbtrack.errors import NbtrackError
from nbtrack.store import query
from nbtrack.store.index import RunIndex

EXPERIMENT = "index"
START = 1_750_000_000_000


def make_run(client, experiment_id, i, status="FINISHED", start_time=None, **extra):
    """Run ``i``: params C/model/seed, metrics auc (ties), loss (not on every run), tags."""
    run = client.create_run(experiment_id, start_time=start_time, run_name=f"run-{i}",
                            tags={"nbtrack.notebook": f"nb{i % 3}.ipynb", "team": ["a", "B"][i % 2]})
    stamp = int(time.time() * 1000)
    metrics = [Metric("auc", round(0.5 + (i * 37 % 11) / 20, 2), stamp, 0)]
    if i % 4 != 1:
        metrics.append(Metric("loss", 1.0 / (i + 1), stamp, 0))
    params = [Param("C", str([0.1, 1.0, 10.0][i % 3])), Param("model", ["logreg", "Logit"][i % 2]),
              Param("seed", str(i))]
    client.log_batch(run.info.run_id, metrics=metrics, params=params,
                     tags=[RunTag(k, v) for k, v in extra.items()])
    if i % 5 == 0:
        client.log_inputs(run.info.run_id, [DatasetInput(
            Dataset(name="train", digest=f"d{i % 2}", source_type="code", source="x"),
            [InputTag("mlflow.data.context", "training")])])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


@pytest.fixture
def runs(client):
    """An experiment of 24 runs: ties in start time and in auc, FAILED and RUNNING ones, one
    deleted, some without ``loss``, some with a dataset input."""
    experiment_id = client.create_experiment(EXPERIMENT)
    ids = []
    for i in range(24):
        status = "FAILED" if i % 7 == 3 else "RUNNING" if i == 5 else "FINISHED"
        # Pairs of runs share a start time: the run id breaks the tie, as in the SQL store.
        ids.append(make_run(client, experiment_id, i, status=status,
                            start_time=START + (i // 2) * 1000))
    client.delete_run(ids[9])
    return experiment_id, ids


def fresh_index(client, experiment_id, **kwargs) -> RunIndex:
    index = RunIndex(client.tracking_uri, experiment_id, **kwargs)
    index.refresh()
    return index


FILTERS = [
    "",
    "params.C = '1.0'",
    "params.model LIKE 'log%'",  # case-sensitive, as on SQLite
    "params.model ILIKE 'log%'",
    "metrics.auc > 0.8",
    "metrics.auc >= 0.75 and metrics.loss < 0.2",
    "metrics.loss != 0.5",
    "tags.team = 'B'",
    "tags.`nbtrack.notebook` = 'nb1.ipynb'",
    "attributes.status = 'FAILED'",
    "attributes.status != 'FINISHED'",
    "attributes.run_name = 'run-4'",
    "attributes.start_time >= 1750000005000",
    "attributes.run_id IN ({ids})",
    "tags.team IS NULL",
    "params.C IS NOT NULL and metrics.auc <= 0.6",
    "datasets.name = 'train' and datasets.digest = 'd0'",
    "datasets.context = 'training'",
]
ORDERS = [None, ["metrics.auc DESC"], ["metrics.loss ASC"], ["params.C DESC", "metrics.auc ASC"],
          ["attributes.start_time ASC"], ["tags.team ASC"]]


@pytest.mark.parametrize("filter_string", FILTERS)
def test_search_returns_what_search_runs_returns_in_the_same_order(client, runs, filter_string):
    experiment_id, ids = runs
    filter_string = filter_string.format(ids=", ".join(f"'{i}'" for i in ids[::3]))
    index = fresh_index(client, experiment_id)
    for order_by in ORDERS:
        expected = [r.info.run_id for r in client.search_runs(
            [experiment_id], filter_string=filter_string, order_by=order_by, max_results=1000)]
        found = [r.run_id for r in index.search(filter_string, order_by=order_by)]
        assert found == expected, (filter_string, order_by)


@pytest.mark.parametrize("metric, ascending, filter_string, top", [
    (None, False, None, 50),
    ("auc", False, None, 7),
    ("auc", True, None, 5),
    ("loss", True, None, 10),
    ("loss", False, "params.model = 'logreg'", 4),
    ("auc", False, "metrics.auc > 100", 5),
])
def test_board_page_ranks_exactly_like_rank_over_search_runs(client, runs, metric, ascending,
                                                             filter_string, top):
    before = query.rank(query.runs(EXPERIMENT, filter=filter_string), metric=metric,
                        ascending=ascending, top=top)
    page = query.runs_page(EXPERIMENT, filter=filter_string, metric=metric, ascending=ascending,
                           top=top)
    now = query.rank(page, metric=page.attrs["metric"], ascending=ascending, top=top)
    pd.testing.assert_frame_equal(now, before)
    assert now.attrs["metric"] == before.attrs["metric"]
    if not before.empty:
        # Every metric of the matching runs is a column (the board's metric dropdown).
        assert {c for c in page.columns if c.startswith("metrics.")} == {
            c for c in query.runs(EXPERIMENT, filter=filter_string).columns
            if c.startswith("metrics.")}


def test_leaderboard_and_unknown_metric_behave_as_before(client, runs):
    board = query.leaderboard(EXPERIMENT, metric="auc", top=3)
    assert list(board["rank"]) == [1, 2, 3] and "models" in board
    with pytest.raises(NbtrackError, match="no run has a metric 'nope'"):
        query.leaderboard(EXPERIMENT, metric="nope")


def test_refresh_picks_up_new_runs_metrics_and_status_changes(client, runs):
    experiment_id, ids = runs
    index = fresh_index(client, experiment_id)
    assert len(index) == 23

    new = make_run(client, experiment_id, 100, status="RUNNING")
    stats = index.refresh()
    assert stats["mode"] == "changes"
    held = {s.run_id: s for s in index.summaries()}
    assert held[new].info.status == "RUNNING" and len(index) == 24

    # Still running: a new metric value shows; then it finishes.
    client.log_metric(new, "auc", 0.99)
    index.refresh()
    assert {s.run_id: s for s in index.summaries()}[new].data.metrics["auc"] == 0.99
    client.set_terminated(new, status="FAILED")
    index.refresh()
    assert {s.run_id: s for s in index.summaries()}[new].info.status == "FAILED"

    # An old run that was running when the index was built finishes later.
    client.set_terminated(ids[5])
    index.refresh()
    assert {s.run_id: s for s in index.summaries()}[ids[5]].info.status == "FINISHED"
    assert index.search("metrics.auc > 0.98")[0].run_id == new


def test_deleted_and_restored_runs_leave_and_rejoin_the_ranking(client, runs):
    experiment_id, ids = runs
    index = fresh_index(client, experiment_id)
    client.delete_run(ids[0])
    index.refresh()
    assert ids[0] not in {s.run_id for s in index.summaries()}
    client.restore_run(ids[0])
    client.restore_run(ids[9])  # deleted before the index was built
    index.refresh()
    held = {s.run_id for s in index.summaries()}
    assert ids[0] in held and ids[9] in held
    expected = [r.info.run_id for r in client.search_runs([experiment_id], max_results=1000)]
    assert [s.run_id for s in index.summaries()] == expected


def test_a_run_logged_by_another_process_appears_at_the_next_refresh(client, runs, store):
    experiment_id, _ = runs
    before = query.leaderboard(EXPERIMENT, metric="auc")
    code = (
        "import mlflow\n"
        f"mlflow.set_tracking_uri({store!r})\n"
        f"mlflow.set_experiment({EXPERIMENT!r})\n"
        "with mlflow.start_run(run_name='from-elsewhere'):\n"
        "    mlflow.log_metric('auc', 7.0)\n"
        "    mlflow.log_param('C', '1.0')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    after = query.leaderboard(EXPERIMENT, metric="auc")
    assert len(after) == len(before) + 1
    assert after["run"].iloc[0] == "from-elsewhere"
    # The other process's index file is the same file: a new process starts from it.
    index = RunIndex(client.tracking_uri, experiment_id)
    assert index.refresh()["mode"] == "changes"
    assert "from-elsewhere" in {s.info.run_name for s in index.summaries()}


def test_a_new_process_reads_the_index_file_instead_of_every_run(client, runs):
    experiment_id, _ = runs
    first = fresh_index(client, experiment_id)
    assert first.last_refresh["mode"] == "full" and first.last_refresh["read"] == 24
    second = RunIndex(client.tracking_uri, experiment_id)
    stats = second.refresh()
    assert stats["mode"] == "changes" and stats["changed"] == 0
    assert [s.run_id for s in second.summaries()] == [s.run_id for s in first.summaries()]


def test_missing_corrupt_or_stale_index_file_is_rebuilt_from_mlflow(client, runs):
    experiment_id, _ = runs
    expected = [s.run_id for s in fresh_index(client, experiment_id).summaries()]
    path = RunIndex(client.tracking_uri, experiment_id).path

    path.unlink()
    index = RunIndex(client.tracking_uri, experiment_id)
    assert index.refresh()["mode"] == "full"
    assert [s.run_id for s in index.summaries()] == expected

    path.write_bytes(b"this is not a SQLite file" * 100)
    index = RunIndex(client.tracking_uri, experiment_id)
    assert index.refresh()["mode"] == "full"
    assert [s.run_id for s in index.summaries()] == expected

    with sqlite3.connect(path) as connection:  # nbtrack's own file, not MLflow's
        connection.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    connection.close()
    index = RunIndex(client.tracking_uri, experiment_id)
    assert index.refresh()["mode"] == "full"
    assert [s.run_id for s in index.summaries()] == expected

    with sqlite3.connect(path) as connection:  # without a snapshot, every row is read
        connection.execute("DELETE FROM snapshot")
        connection.execute("UPDATE runs SET light = 'garbage'")
    connection.close()
    index = RunIndex(client.tracking_uri, experiment_id)
    assert index.refresh()["mode"] == "full"
    assert [s.run_id for s in index.summaries()] == expected

    # The rest of a run's summary is read when asked: a broken one is read again from MLflow.
    expected_page = list(query.runs_page(EXPERIMENT)["run_id"])
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE runs SET summary = 'garbage'")
    connection.close()
    from nbtrack.store.index import RunIndex as Shared

    Shared._shared.clear()  # a new process
    assert list(query.runs_page(EXPERIMENT)["run_id"]) == expected_page


def test_a_new_process_loads_the_snapshot_with_the_rows_written_since_in_their_place(client,
                                                                                    runs):
    from nbtrack.store.index_file import record_runs

    experiment_id, ids = runs
    file = fresh_index(client, experiment_id)._file  # its write made the snapshot
    # What another process's recorder wrote since: a new run between older ones, and a run
    # written again (a new row) with a new metric value.
    new = make_run(client, experiment_id, 40, start_time=START + 5500)
    client.log_metric(ids[3], "auc", 0.99)
    record_runs(client.tracking_uri, [client.get_run(new), client.get_run(ids[3])])

    def loaded():
        _, lights, _ = file.load()
        return [light[0] for light in lights if not light[3]], {light[0]: light for light in lights}

    natural = [run.info.run_id for run in client.search_runs([experiment_id])]
    order, lights = loaded()
    assert order == natural and new in order
    assert lights[ids[3]][4]["auc"] == 0.99 and lights[ids[9]][3]  # deleted: held, not ranked
    # A deleted row is not brought back by the snapshot: the write makes it again.
    _, seq = file.rows_since(0)
    file.save([], seq, {}, removed=[new])
    assert loaded()[0] == [run_id for run_id in natural if run_id != new]
    # A snapshot that does not read: the rows are, and the next write makes it again.
    with sqlite3.connect(file.path) as connection:
        connection.execute("UPDATE snapshot SET data = x'00ff'")
    connection.close()
    assert loaded()[0] == [run_id for run_id in natural if run_id != new]
    assert file.broken_snapshot
    file.save([], seq, {})
    assert not file.broken_snapshot
    with sqlite3.connect(file.path) as connection:
        (data,) = connection.execute("SELECT data FROM snapshot").fetchone()
    connection.close()
    assert data != b"\x00\xff"


def ended_long_ago(client, experiment_id, i) -> str:
    """A finished run whose start and end are long past: a rename of it changes nothing a look
    for changes reads (start time, end time, running, deleted), so only a full read sees it."""
    run_id = make_run(client, experiment_id, i, status="RUNNING", start_time=START)
    client.set_terminated(run_id, status="FINISHED", end_time=START + 60_000)
    return run_id


def names(index) -> set[str]:
    return {s.info.run_name for s in index.summaries()}


def test_changes_only_a_full_read_sees_show_after_a_reconcile(client, runs):
    experiment_id, _ = runs
    old = [ended_long_ago(client, experiment_id, 30 + i) for i in range(3)]
    index = fresh_index(client, experiment_id)
    # A finished run renamed in the MLflow UI: nothing about it says "changed since".
    client.set_tag(old[0], "mlflow.runName", "renamed")
    assert index.refresh(full=False)["changed"] == 0
    assert "renamed" not in names(index)
    assert index.refresh(full=True)["mode"] == "full"
    assert "renamed" in names(index)

    # A reconcile that is due runs on its own: in the caller when the index is empty...
    client.set_tag(old[1], "mlflow.runName", "renamed-again")
    due = RunIndex(client.tracking_uri, experiment_id, reconcile_seconds=0)
    assert due.refresh()["mode"] == "full"  # loads the file and, being due, reads everything
    assert "renamed-again" in names(due)
    # ... and on the board's path, in the background: the call returns after the quick look,
    # which cannot see this rename; the background full read does.
    client.set_tag(old[2], "mlflow.runName", "third")
    assert due.refresh(background=True)["mode"] == "changes"
    due.wait(timeout=60)
    assert "third" in names(due)
    assert RunIndex(client.tracking_uri, experiment_id).refresh(full=False)["changed"] == 0


def test_bad_filter_is_a_readable_error(client, runs):
    with pytest.raises(NbtrackError, match="filter 'params.C = = oops' not understood"):
        query.runs_page(EXPERIMENT, filter="params.C = = oops")
    with pytest.raises(NbtrackError, match="not understood"):
        query.leaderboard(EXPERIMENT, filter="metrics.auc > 'high'")


def test_missing_experiment(client, store):
    assert query.runs_page("nothing-here", missing_ok=True).empty
    with pytest.raises(NbtrackError, match="no experiment named 'nothing-here'"):
        query.runs_page("nothing-here")


def test_index_keeps_working_in_memory_when_its_folder_cannot_be_written(client, runs, tmp_path,
                                                                         capsys):
    experiment_id, _ = runs
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    index = RunIndex(client.tracking_uri, experiment_id, folder=blocked / "sub")
    index.refresh()
    assert len(index) == 23
    assert "kept in memory only" in capsys.readouterr().err


def test_a_file_broken_under_an_index_loaded_from_it_brings_a_full_read(client, runs):
    experiment_id, _ = runs
    expected_page = list(query.runs_page(EXPERIMENT)["run_id"])
    RunIndex._shared.clear()  # a new process: the summaries' texts stay in the file
    index = RunIndex.shared(client.tracking_uri, experiment_id)
    index.refresh()
    with sqlite3.connect(index.path) as connection:  # another experiment's file now
        connection.execute("UPDATE meta SET value = 'other' WHERE key = 'experiment_id'")
    connection.close()
    index.refresh(full=False)  # its write finds the file unusable: a new one, the texts lost
    assert index.reconcile_due()
    assert list(query.runs_page(EXPERIMENT)["run_id"]) == expected_page  # read from MLflow
    assert len(RunIndex(client.tracking_uri, experiment_id)._file.rows_since(0)[0]) == 24


def test_deleted_runs_stay_out_as_search_runs_leaves_them_out(client, runs):
    experiment_id, ids = runs
    index = fresh_index(client, experiment_id)
    assert ids[9] not in {s.run_id for s in index.search()}
    deleted = client.search_runs([experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert [r.info.run_id for r in deleted] == [ids[9]]


# -- the first look (issue 16.4) -------------------------------------------------------------------


def test_the_index_file_lives_beside_a_sqlite_store_and_in_the_cache_for_a_server(store,
                                                                                  monkeypatch,
                                                                                  tmp_path):
    from nbtrack.store.index_file import INDEX_FOLDER

    monkeypatch.delenv("NBTRACK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    database = Path(store[len("sqlite:///"):])
    assert RunIndex(store, "1").path.parent == database.parent / INDEX_FOLDER
    assert RunIndex("http://127.0.0.1:5000", "1").path.parent == tmp_path / "xdg" / "nbtrack"
    monkeypatch.setenv("NBTRACK_CACHE_DIR", str(tmp_path / "chosen"))
    assert RunIndex(store, "1").path.parent == tmp_path / "chosen"


def test_a_tracked_cell_fills_the_index_so_a_new_process_ranks_it_without_reading_mlflow(
        shell, client, monkeypatch):
    import nbtrack
    from nbtrack.store import index as run_index

    # The first look reads the newest runs (any writer's) besides the file: two, here.
    monkeypatch.setattr(run_index, "QUICK_LOOK_RUNS", 2)
    for i in range(3):
        assert shell.run(f"%%track -e filled -n cell-{i}\nscore = {i} / 10").success
    assert nbtrack.flush(timeout=60)
    experiment_id = client.get_experiment_by_name("filled").experiment_id
    index = RunIndex(client.tracking_uri, experiment_id)  # a new process's: nothing in memory
    assert index.path.exists()  # the recorder made it; nobody looked at the board yet
    stats = index.refresh(background=True)
    assert stats["mode"] == "quick" and stats["read"] == 2  # the oldest run: from the file
    assert names(index) == {"cell-0", "cell-1", "cell-2"}
    assert [s.data.metrics["score"] for s in index.search(order_by=["metrics.score DESC"])] == [
        0.2, 0.1, 0.0]
    index.wait(timeout=60)  # the full read due on a file nobody reconciled, in the background
    assert not index.filling and not index.reconcile_due()


def test_a_first_look_at_a_store_never_indexed_ranks_the_newest_runs_then_fills(client, runs,
                                                                                monkeypatch):
    from nbtrack.store import index as run_index

    experiment_id, ids = runs
    # Small pages so 24 runs take several: the sizes are settings, the reads are MLflow's.
    monkeypatch.setattr(run_index, "QUICK_LOOK_RUNS", 6)
    monkeypatch.setattr(run_index, "FILL_PAGE_SIZE", 5)
    monkeypatch.setattr(run_index, "FILL_NOTIFY_SECONDS", 0.0)
    index = RunIndex(client.tracking_uri, experiment_id)
    heard = []

    class Board:  # a listener held weakly, as the board's refresh is
        def refresh(self):
            heard.append((len(index), index.filling))

    board = Board()
    index.on_change(board.refresh)
    stats = index.refresh(background=True)
    assert stats["mode"] == "quick" and stats["read"] == 6
    newest = [r.info.run_id for r in client.search_runs([experiment_id], max_results=6,
                                                       run_view_type=ViewType.ALL)]
    assert {s.run_id for s in index.summaries()} <= set(newest)
    index.wait(timeout=60)
    assert heard[0][0] < 23 and heard[0][1]  # ranked while it filled...
    assert heard[-1] == (23, False)  # ... and told once it held every run
    assert [len_ for len_, _ in heard] == sorted(len_ for len_, _ in heard)
    assert [s.run_id for s in index.summaries()] == [
        s.run_id for s in fresh_index(client, experiment_id).summaries()]


def test_a_second_look_right_after_a_sweep_does_not_read_its_runs_again(client):
    experiment_id = client.create_experiment("sweep-just-ended")
    minute_ago = int(time.time() * 1000) - 60_000
    for i in range(20):  # a sweep that ended a minute ago
        run_id = make_run(client, experiment_id, i, status="RUNNING", start_time=minute_ago + i)
        client.set_terminated(run_id, end_time=minute_ago + 1000 + i)
    index = fresh_index(client, experiment_id)
    assert len(index) == 20
    stats = index.refresh(full=False)
    # A SQLite store's writers share this machine's clock: only the last seconds are read again.
    assert stats["read"] == 0 and stats["changed"] == 0


def test_the_board_on_a_store_never_indexed_re_ranks_as_the_runs_arrive(client, runs,
                                                                        monkeypatch):
    from nbtrack.board import render
    from nbtrack.board.widget import Leaderboard
    from nbtrack.store import index as run_index

    experiment_id, _ = runs
    monkeypatch.setattr(run_index, "QUICK_LOOK_RUNS", 6)
    monkeypatch.setattr(run_index, "FILL_PAGE_SIZE", 5)
    board = Leaderboard(experiment=EXPERIMENT, metric="auc", tracking_uri=client.tracking_uri)
    assert len(board.runs) <= 23
    RunIndex.shared(client.tracking_uri, experiment_id).wait(timeout=60)
    # The index told the board when it held every run; nobody pressed Refresh.
    assert len(board.runs) == 23
    assert "reading the runs" not in board.table.value
    assert list(board.runs["run_id"]) == list(query.leaderboard(EXPERIMENT, metric="auc",
                                                                 models=False)["run_id"])
    assert render.caption("e", "auc", False, "", "", None, 6).endswith(
        "; reading the runs: ranked among the first 6 read")
