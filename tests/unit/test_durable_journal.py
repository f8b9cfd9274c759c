"""The on-disk journal (nbtrack/durable/journal.py): records, progress, cells that began, the
series spool, and the lock that tells a live kernel's folder from an ended one's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from nbtrack.durable import journal as journals
from nbtrack.durable.journal import KernelJournal, SeriesSpool, read_spool
from nbtrack.record import FINISHED, CellRecord, ModelCapture, Series


def a_record(name: str, start: int, **fields) -> CellRecord:
    return CellRecord(experiment="exp", run_name=name, start_time_ms=start, end_time_ms=start + 1,
                      status=FINISHED, params={"C": "0.1"}, **fields)


def test_kept_records_come_back_oldest_first_with_their_store(tmp_path):
    journal = KernelJournal.create(tmp_path)
    later = journal.keep(a_record("later", 2_000), "sqlite:///b.db")
    first = journal.keep(a_record("first", 1_000), "sqlite:///a.db")
    entries = journal.records()
    assert [e.path for e in entries] == [first.path, later.path]
    assert [(e.record().run_name, e.tracking_uri) for e in entries] == [
        ("first", "sqlite:///a.db"), ("later", "sqlite:///b.db")]
    assert entries[0].record() == a_record("first", 1_000)
    assert not journal.is_empty()


def test_a_model_that_cannot_be_pickled_is_left_out_and_the_rest_kept(tmp_path):
    journal = KernelJournal.create(tmp_path)
    unpicklable = ModelCapture("clf", lambda x: x)
    entry = journal.keep(a_record("fit", 1_000, models=(unpicklable,)), "sqlite:///a.db")
    assert entry.record().models == () and entry.record().params == {"C": "0.1"}


def test_progress_is_saved_read_back_and_discarded_with_its_record(tmp_path):
    journal = KernelJournal.create(tmp_path)
    entry = journal.keep(a_record("fit", 1_000), "sqlite:///a.db")
    assert journal.progress(entry) == {}
    journal.save_progress(entry, {"run_id": "r1", "done": ["values"]})
    assert journal.progress(entry) == {"run_id": "r1", "done": ["values"]}
    journal.discard(entry)
    assert journal.records() == [] and journal.progress(entry) == {}
    assert journal.is_empty()
    assert sorted(p.name for p in journal.folder.iterdir()) == [journals.LOCK_NAME]


def test_unreadable_record_files_are_skipped_and_listed(tmp_path):
    journal = KernelJournal.create(tmp_path)
    good = journal.keep(a_record("fit", 1_000), "sqlite:///a.db")
    broken = journal.folder / "000000000000500-1-000009.record"
    broken.write_bytes(b"not a pickle")
    assert [e.path for e in journal.records()] == [good.path]
    assert journal.unreadable() == [broken]


def test_cells_that_began_are_unfinished_until_they_end(tmp_path):
    journal = KernelJournal.create(tmp_path)
    first = journal.begun(1_000, {"run_name": "a"})
    second = journal.begun(2_000, {"run_name": "b"})
    KernelJournal.update_begun(second, {"run_name": "b", "run_id": "r2"})
    assert journal.unfinished() == [(first, {"run_name": "a"}),
                                    (second, {"run_name": "b", "run_id": "r2"})]
    KernelJournal.ended(first)
    KernelJournal.ended(None)  # a cell that never noted its start
    assert journal.unfinished() == [(second, {"run_name": "b", "run_id": "r2"})]
    assert not journal.is_empty()
    KernelJournal.ended(second)
    assert journal.is_empty()


def test_close_removes_an_empty_folder_and_keeps_one_with_records(tmp_path):
    empty = KernelJournal.create(tmp_path)
    empty.close()
    assert not empty.folder.exists()
    waiting = KernelJournal.create(tmp_path)
    waiting.keep(a_record("fit", 1_000), "sqlite:///a.db")
    waiting.close()
    assert journals.waiting_count(waiting.folder) == 1
    assert journals.kernel_folders(tmp_path) == [waiting.folder]


def test_a_live_kernels_folder_cannot_be_claimed_and_an_ended_ones_can(tmp_path):
    live = KernelJournal.create(tmp_path)
    live.keep(a_record("fit", 1_000), "sqlite:///a.db")
    assert KernelJournal.claim(live.folder) is None
    live.close()  # the lock goes with the kernel
    taken = KernelJournal.claim(live.folder)
    assert taken is not None and [e.record().run_name for e in taken.records()] == ["fit"]
    assert KernelJournal.claim(live.folder) is None  # now held by whoever took it over
    taken.close()


def test_a_killed_kernels_folder_is_claimed_with_what_it_left(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from nbtrack.durable.journal import KernelJournal
        from nbtrack.record import CellRecord
        journal = KernelJournal.create({str(tmp_path)!r})
        journal.keep(CellRecord("exp", "kept", 1000, 1001, "FINISHED"), "sqlite:///a.db")
        journal.begun(2000, {{"run_name": "running"}})
        print(journal.folder, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ}, timeout=120)
    assert done.returncode == -9, done.stderr
    folder = journals.kernel_folders(tmp_path)
    assert [str(f) for f in folder] == [done.stdout.strip()]
    journal = KernelJournal.claim(folder[0])
    assert journal is not None
    assert [e.record().run_name for e in journal.records()] == ["kept"]
    assert [facts for _, facts in journal.unfinished()] == [{"run_name": "running"}]
    journal.close()


def test_kernel_folders_leave_out_folders_still_being_set_up(tmp_path):
    (tmp_path / ".host-1-2.new").mkdir()
    made = KernelJournal.create(tmp_path)
    assert journals.kernel_folders(tmp_path) == [made.folder]
    assert journals.kernel_folders(tmp_path / "nothing-here") == []
    made.close()


def test_the_series_spool_appends_new_points_and_survives_a_cut_short_frame(tmp_path):
    journal = KernelJournal.create(tmp_path)
    begun = journal.begun(1_000, {"run_name": "loop"})
    loss = Series("loss")
    spool = SeriesSpool(begun)
    for step in range(3):
        loss.add(1.0 / (step + 1), step, 1_000 + step)
    spool.write({"loss": loss})
    loss.add(0.1, 3, 1_003)
    acc = Series("acc")
    acc.add(0.5, 0, 1_000)
    spool.write({"loss": loss, "acc": acc})
    spool.write({"loss": loss, "acc": acc})  # nothing new: nothing appended
    spool.close()
    found = {s.key: s for s in read_spool(begun)}
    assert list(found["loss"].steps) == [0, 1, 2, 3]
    assert list(found["loss"].values) == [1.0, 0.5, 1 / 3, 0.1]
    assert list(found["acc"].timestamps_ms) == [1_000]
    spool_file = begun.with_suffix(journals.SPOOL_SUFFIX)
    spool_file.write_bytes(spool_file.read_bytes()[:-5])  # the kernel died mid-write
    # The last frame (acc's point) is cut short and ignored; the frames before it are whole.
    assert {s.key: len(s) for s in read_spool(begun)} == {"loss": 4}
    KernelJournal.ended(begun)
    assert not spool_file.exists() and read_spool(begun) == []


def test_records_files_hold_json_progress_next_to_them(tmp_path):
    journal = KernelJournal.create(tmp_path)
    entry = journal.keep(a_record("fit", 1_000), "sqlite:///a.db")
    journal.save_progress(entry, {"run_id": "r1"})
    progress_file = entry.path.with_suffix(".progress")
    assert json.loads(progress_file.read_text()) == {"run_id": "r1"}
    assert not list(journal.folder.glob("*.partial"))  # written whole, then renamed
