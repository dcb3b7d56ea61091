"""The device's own files under faults: a full disk under the journal and the lock, the
snapshots a crash leaves behind, and the failpoints every crash test relies on.

(The end-to-end versions, with the invariants, are the ``disk:*`` and ``crash:*``
scenarios of ``tests/test_chaos.py``.)
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_harness import make_world, seed_world
from chaos_scenarios import InProcess, in_process, page_quota

from sdk import (
    JournalError,
    MigrationBlockedError,
    MigrationClient,
    MigrationOptions,
    MigrationOutcome,
    RetryPolicy,
    StoreError,
    _failpoints,
)
from sdk._migration.journal import Journal
from sdk._migration.lock import MigrationLock, lock_path_for


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    with in_process(tmp_path, seed=0) as server:
        yield server


@pytest.fixture(autouse=True)
def _failpoints_off() -> Iterator[None]:
    _failpoints.reset()
    yield
    _failpoints.reset()


def client(app: InProcess, store: Path, user: str, cache: Path) -> MigrationClient:
    return MigrationClient(
        http_client=app.client,
        user_id=user,
        token=app.token(user),
        store_path=store,
        retry=RetryPolicy.none(),
        options=MigrationOptions(batch_size=10, cache_dir=cache),
    )


def test_a_full_disk_under_a_new_journal_says_so_and_does_not_call_it_damaged(
    tmp_path: Path,
) -> None:
    with page_quota(".migration-journal", 1), pytest.raises(JournalError) as caught:
        Journal(tmp_path / "store.sqlite3.migration-journal")

    message = str(caught.value)
    assert "full" in message
    assert "damaged" not in message and "delete" not in message


def test_a_damaged_journal_is_still_called_damaged(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3.migration-journal"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))

    with pytest.raises(JournalError, match="damaged"):
        Journal(path)


def test_a_lock_that_cannot_be_created_is_a_store_error_not_a_bare_os_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.open

    def full_disk(path: str, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".migration-lock"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", full_disk)

    with pytest.raises(StoreError, match="No space left"):
        MigrationLock(lock_path_for(tmp_path / "store.sqlite3")).acquire()


def test_a_lock_held_elsewhere_still_blocks(tmp_path: Path) -> None:
    path = lock_path_for(tmp_path / "store.sqlite3")
    with MigrationLock(path), pytest.raises(MigrationBlockedError, match="already migrating"):
        MigrationLock(path).acquire()


def test_snapshots_a_crash_left_are_dropped_and_other_stores_snapshots_kept(
    app: InProcess, tmp_path: Path
) -> None:
    world = make_world(tmp_path / "a", "alice")
    seed_world(world, app.data_dir)
    other = make_world(tmp_path / "b", "bob")
    cache = tmp_path / "shared-cache"
    # Bob's migration stops after its snapshot is journaled: his snapshot is in use.
    _failpoints.enable("start.before", "raise")
    with pytest.raises(_failpoints.FailpointError), client(app, other.store, "bob", cache) as c:
        c.migrate()
    bobs = sorted(p.name for p in cache.iterdir())
    # Alice's migration is killed twice while snapshotting, before anything is journaled.
    for failpoint in ("snapshot.during", "snapshot.taken"):
        _failpoints.reset()
        _failpoints.enable(failpoint, "raise")
        with (
            pytest.raises(_failpoints.FailpointError),
            client(app, world.store, "alice", cache) as c,
        ):
            c.migrate()
    assert len(list(cache.iterdir())) > len(bobs)  # alice's leftovers are there
    _failpoints.reset()

    with client(app, world.store, "alice", cache) as c:
        result = c.migrate()

    assert result.outcome is MigrationOutcome.COMPLETED and result.verified
    assert sorted(p.name for p in cache.iterdir()) == bobs


def test_every_failpoint_is_reached_by_a_migration_with_conflicts(
    app: InProcess, tmp_path: Path
) -> None:
    world = make_world(tmp_path, "carol")
    seed_world(world, app.data_dir)
    _failpoints.enable("*", "raise", at=10**9)  # counts every boundary, never fires

    with client(app, world.store, "carol", world.cache) as c:
        assert c.migrate().verified

    hits = _failpoints.hits()
    assert {name for name in _failpoints.MIGRATION_NAMES if not hits.get(name)} == set()
    assert hits["batch.sent"] == 13  # 122 items, 10 a batch
    assert 1 <= hits["batch.answered"] <= 13  # receipts that land together are journaled together


def test_failpoints_cost_nothing_and_count_nothing_when_off() -> None:
    for name in _failpoints.NAMES:
        _failpoints.failpoint(name)

    assert _failpoints.hits() == {}


def test_the_environment_is_read_when_a_migration_starts_not_at_import(
    app: InProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world(tmp_path, "dave")
    monkeypatch.setenv(_failpoints.ENV_VAR, "complete.before=raise")
    assert _failpoints.hits() == {}  # set after import: nothing enabled yet

    with (
        pytest.raises(_failpoints.FailpointError, match=r"complete\.before"),
        client(app, world.store, "dave", world.cache) as c,
    ):
        c.migrate()
    monkeypatch.delenv(_failpoints.ENV_VAR)
    _failpoints.reset()
    with client(app, world.store, "dave", world.cache) as c:
        assert c.migrate().verified  # and it resumes from there


@pytest.mark.parametrize(
    "spec", ["nonsense", "no.such.point=kill", "complete.before=explode", "complete.before=kill@0"]
)
def test_a_malformed_failpoint_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        _failpoints.configure_from_env({_failpoints.ENV_VAR: spec})
