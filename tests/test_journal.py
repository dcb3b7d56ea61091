import os
import sqlite3
import subprocess
import sys

import pytest

import sdk._migration.lock
from sdk._errors import JournalError
from sdk._migration.journal import Journal, JournalRecord, Phase, ResolutionRecord, journal_path_for
from sdk._migration.lock import MigrationLock


def record(**overrides: object) -> JournalRecord:
    fields: dict[str, object] = dict(
        user_id="u1",
        device_id="d1",
        migration_id="mig-0001",
        snapshot_path="/tmp/s.sqlite3",
        dataset_checksum="a" * 64,
        item_count=10,
        batch_count=2,
    )
    fields.update(overrides)
    return JournalRecord.new(**fields)


def test_a_new_journal_holds_no_migration(tmp_path):
    with Journal(tmp_path / "j") as journal:
        assert journal.load() is None


def test_a_record_survives_closing_and_reopening_the_journal(tmp_path):
    with Journal(tmp_path / "j") as journal:
        journal.create(record())
        journal.advance(Phase.STARTED, session_id="s1")
        journal.record_batches([(0, 5, 100), (1, 5, 90)])
    with Journal(tmp_path / "j") as journal:
        loaded = journal.load()
        assert loaded is not None
        assert (loaded.phase, loaded.session_id) == (Phase.STARTED, "s1")
        assert journal.acked_batches() == {0, 1}


def test_phases_are_ordered_as_the_migration_runs():
    assert list(Phase) == sorted(Phase)
    assert Phase.PREPARED < Phase.STARTED < Phase.UPLOADED < Phase.RESOLVED
    assert Phase.RESOLVED < Phase.COMPLETED < Phase.VERIFIED
    assert not Phase.COMPLETED < Phase.STARTED


def test_creating_a_migration_forgets_the_previous_ones_batches_and_resolutions(tmp_path):
    with Journal(tmp_path / "j") as journal:
        journal.create(record())
        journal.record_batches([(0, 5, 100)])
        journal.save_resolutions(
            [
                ResolutionRecord(
                    conflict_id="c",
                    collection="a",
                    key="k",
                    choice="server",
                    strategy="server_wins",
                    item={"x": 1},
                )
            ]
        )
        journal.create(record(migration_id="mig-0002"))
        assert journal.acked_batches() == set()
        assert journal.resolutions() == []


def test_resolutions_are_replaced_by_conflict_id_and_marked_posted(tmp_path):
    def res(choice: str) -> ResolutionRecord:
        return ResolutionRecord(
            conflict_id="c1",
            collection="a",
            key="k",
            choice=choice,
            strategy="s",
            item={"choice": choice},
        )

    with Journal(tmp_path / "j") as journal:
        journal.create(record())
        journal.save_resolutions([res("server")])
        journal.save_resolutions([res("local")])
        journal.mark_posted(["c1"])
        (only,) = journal.resolutions()
        assert (only.choice, only.item, only.posted) == ("local", {"choice": "local"}, True)


def test_advancing_without_a_migration_is_a_journal_error(tmp_path):
    with Journal(tmp_path / "j") as journal, pytest.raises(JournalError, match="no migration"):
        journal.advance(Phase.STARTED)


def test_a_damaged_journal_file_is_a_journal_error_that_says_to_delete_it(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(JournalError, match="delete it"):
        Journal(path)


def test_clear_forgets_everything(tmp_path):
    with Journal(tmp_path / "j") as journal:
        journal.create(record())
        journal.record_batches([(0, 1, 1)])
        journal.clear()
        assert journal.load() is None
        assert journal.acked_batches() == set()


def test_the_journal_lives_beside_the_store_in_its_own_file(tmp_path):
    store = tmp_path / "store.sqlite3"
    assert journal_path_for(store).parent == tmp_path
    assert journal_path_for(store) != store


def test_a_write_is_durable_even_when_the_process_dies_right_after(tmp_path):
    path = tmp_path / "j"
    code = (
        "import os, sys\n"
        "from sdk._migration.journal import Journal, JournalRecord, Phase\n"
        "j = Journal(sys.argv[1])\n"
        "j.create(JournalRecord.new(user_id='u', device_id='d', migration_id='mig-0001',"
        " snapshot_path='s', dataset_checksum='a'*64, item_count=1, batch_count=1))\n"
        "j.advance(Phase.UPLOADED)\n"
        "os._exit(9)\n"  # no close, no atexit: like a kill
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], check=False)
    assert proc.returncode == 9
    with Journal(path) as journal:
        loaded = journal.load()
        assert loaded is not None and loaded.phase is Phase.UPLOADED


def test_the_migration_lock_admits_one_holder_at_a_time(tmp_path):
    path = tmp_path / "lock"
    first = MigrationLock(path)
    assert first.try_acquire()
    assert not MigrationLock(path).try_acquire()
    first.release()
    second = MigrationLock(path)
    assert second.try_acquire()
    second.release()


def test_acquiring_waits_out_another_process_that_only_peeks_at_the_lock(tmp_path, monkeypatch):
    # `status` takes the lock for a moment to see whether a migration runs; a migration
    # starting in that moment must not fail with "another process is migrating".
    # The peeker lets go when told, once acquire() has found the lock taken: no timing.
    monkeypatch.setattr(sdk._migration.lock, "_PEEK_GRACE_S", 60.0)  # a slow machine is not a peek
    path = tmp_path / "lock"
    code = (
        "import sys\n"
        "from sdk._migration.lock import MigrationLock\n"
        "lock = MigrationLock(sys.argv[1]); assert lock.try_acquire()\n"
        "print('held', flush=True); sys.stdin.readline(); lock.release()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert proc.stdin is not None
        lock = MigrationLock(path)
        assert not lock.try_acquire()  # still held: acquire() has something to wait out
        refusals = []
        first_try = lock.try_acquire

        def try_acquire() -> bool:
            got = first_try()
            if not got and not refusals:
                proc.stdin.write("let go\n")  # the peek ends while acquire() waits
                proc.stdin.flush()
            refusals.append(not got)
            return got

        lock.try_acquire = try_acquire  # type: ignore[method-assign]

        lock.acquire()

        assert refusals[0] is True and refusals[-1] is False  # it waited, then took it
        lock.release()
    assert proc.returncode == 0


def test_the_lock_of_a_killed_process_is_released_by_the_system(tmp_path):
    path = tmp_path / "lock"
    code = (
        "import os, sys\n"
        "from sdk._migration.lock import MigrationLock\n"
        "lock = MigrationLock(sys.argv[1]); assert lock.try_acquire()\n"
        "print('held', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    assert not MigrationLock(path).try_acquire()
    proc.kill()
    proc.wait()
    assert proc.stdin is not None
    proc.stdin.close()
    proc.stdout.close()
    lock = MigrationLock(path)
    assert lock.try_acquire()
    lock.release()


def test_journal_files_are_plain_sqlite_so_support_can_read_them(tmp_path):
    path = tmp_path / "j"
    with Journal(path) as journal:
        journal.create(record())
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM journal").fetchone() == (1,)
    finally:
        conn.close()
    assert os.path.getsize(path) > 0
