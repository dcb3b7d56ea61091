"""The sync after the migration: the SDK against the real server app, in-process."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sdk_fixtures import learning_items, make_store

from backend_stub import seed_cloud_items
from sdk import (
    ConflictPolicy,
    LocalState,
    LocalStore,
    MigrationClient,
    MigrationOptions,
    MigrationOutcome,
    ProtocolError,
    RemoteChangesApplied,
    RetryPolicy,
    SyncCompleted,
    _failpoints,
    detect_local,
)
from sdk.contract import Item, multiset_checksum, multiset_hex


def device(server, folder: Path, user: str = "alice", **kwargs) -> MigrationClient:
    options = kwargs.pop("options", None) or MigrationOptions(
        batch_size=50,
        cache_dir=folder / "cache",
        conflicts=kwargs.pop("conflicts", ConflictPolicy()),
    )
    return MigrationClient(
        http_client=server.client,
        user_id=user,
        token=server.token(user),
        store_path=folder / "store.sqlite3",
        options=options,
        retry=RetryPolicy.none(),
        **kwargs,
    )


def items_of(path: Path) -> dict[tuple[str, str], Item]:
    with LocalStore(path, create=False) as store:
        return {(i["collection"], i["key"]): i for i in store.iter_items()}


def cloud_of(server, user: str = "alice") -> dict[tuple[str, str], Item]:
    storage = server.storage
    page = storage.pull_page(user, after=None, until=None, limit=10**6)
    return {(s.item.collection, s.item.key): s.item.wire() for s in page.items}


def test_writes_made_after_the_migration_reach_the_cloud_with_the_next_sync(server, tmp_path):
    make_store(tmp_path / "store.sqlite3", learning_items(30))
    with device(server, tmp_path) as client:
        migrated = client.migrate()
        assert migrated.verified and migrated.sync is not None and migrated.sync.verified
        with LocalStore(tmp_path / "store.sqlite3") as store:
            store.put("lesson_progress", "item-000001", {"score": 100})
            store.put("lesson_progress", "after", {"score": 1})
            store.delete("flashcards", "item-000002")
        found = detect_local(tmp_path / "store.sqlite3")
        assert found.state is LocalState.MIGRATED and found.pending_changes == 3
        assert "3 local change(s) are not in the cloud yet" in found.reason
        result = client.sync()
    assert (result.pushed, result.pending_changes, result.verified) == (3, 0, True)
    assert cloud_of(server) == items_of(tmp_path / "store.sqlite3")
    assert detect_local(tmp_path / "store.sqlite3").pending_changes == 0


def test_a_second_device_gets_the_whole_cloud_dataset_and_both_converge(server, tmp_path):
    phone, tablet = tmp_path / "phone", tmp_path / "tablet"
    make_store(phone / "store.sqlite3", learning_items(40))
    with device(server, phone) as first:
        assert first.migrate().verified
    with device(server, tablet) as second:  # no store at all: a new device signs in
        bootstrap = second.sync()
    assert bootstrap.verified and bootstrap.pulled == 42
    assert items_of(tablet / "store.sqlite3") == items_of(phone / "store.sqlite3")

    with LocalStore(tablet / "store.sqlite3") as store:
        store.put("flashcards", "from-tablet", {"front": "gato"})
    with LocalStore(phone / "store.sqlite3") as store:
        store.delete("lesson_progress", "item-000000")
    with device(server, tablet) as second, device(server, phone) as first:
        second.sync()
        first.sync()
        last = second.sync()
    assert last.verified
    assert (
        items_of(tablet / "store.sqlite3") == items_of(phone / "store.sqlite3") == cloud_of(server)
    )
    assert items_of(tablet / "store.sqlite3")[("lesson_progress", "item-000000")]["deleted"]


class _BrokenPages(httpx.BaseTransport):
    """The real server's answers, but every page of changes damaged by ``damage`` once
    ``broken``."""

    def __init__(self, inner: httpx.BaseTransport, damage: Callable[[bytes], bytes]) -> None:
        self.inner, self.damage, self.broken = inner, damage, True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not (self.broken and request.url.path.endswith("/sync/changes")):
            return response
        body = self.damage(response.read())
        return httpx.Response(response.status_code, headers=response.headers, content=body)


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        pytest.param(lambda body: body[:-40], "not JSON", id="cut-short"),
        # Integers SQLite cannot store: the server never writes them.
        pytest.param(
            lambda body: re.sub(rb'"updatedAt":\d+', b'"updatedAt":9223372036854775808', body),
            "updatedAt .* beyond 64 bits",
            id="updatedAt-beyond-64-bits",
        ),
        pytest.param(
            lambda body: re.sub(rb'"seq":\d+', b'"seq":18446744073709551616', body),
            "no valid seq",
            id="seq-beyond-64-bits",
        ),
    ],
)
def test_a_damaged_page_of_changes_is_a_protocol_error_and_writes_nothing(
    server, tmp_path, damage, error
):
    phone, tablet = tmp_path / "phone", tmp_path / "tablet"
    make_store(phone / "store.sqlite3", learning_items(40))
    with device(server, phone) as first:
        assert first.migrate().verified
    pages = _BrokenPages(server.client._transport, damage)
    http = httpx.Client(base_url=server.client.base_url, transport=pages)
    new = MigrationClient(
        http_client=http,
        user_id="alice",
        token=server.token("alice"),
        store_path=tablet / "store.sqlite3",
        options=MigrationOptions(cache_dir=tablet / "cache"),
        retry=RetryPolicy.none(),
    )
    with new, pytest.raises(ProtocolError, match=error):
        new.sync()
    assert items_of(tablet / "store.sqlite3") == {}
    pages.broken = False
    with new:
        assert new.sync().verified
    assert items_of(tablet / "store.sqlite3") == items_of(phone / "store.sqlite3")


def test_a_second_device_with_its_own_data_migrates_then_receives_the_rest(server, tmp_path):
    phone, tablet = tmp_path / "phone", tmp_path / "tablet"
    make_store(phone / "store.sqlite3", learning_items(20))
    make_store(tablet / "store.sqlite3", [learning_items(1)[0] | {"key": "tablet-only"}])
    with device(server, phone) as first:
        first.migrate()
    with device(server, tablet) as second:
        result = second.migrate()
    assert result.outcome is MigrationOutcome.COMPLETED and result.verified
    assert result.sync is not None and result.sync.pulled == 22
    assert items_of(tablet / "store.sqlite3") == cloud_of(server)
    assert len(cloud_of(server)) == 23


def test_equal_data_with_other_timestamps_is_never_a_conflict(server, tmp_path):
    item = Item(collection="prefs", key="score", data={"score": 0}, updatedAt=5, deleted=False)
    seed_cloud_items(server.storage, "alice", [item | {"updatedAt": 9}], device_id="tablet")
    make_store(tmp_path / "store.sqlite3", [item])
    with device(server, tmp_path, conflicts=ConflictPolicy(default="manual")) as client:
        result = client.migrate()
        assert result.outcome is MigrationOutcome.COMPLETED and result.verified
        assert client.pending_conflicts() == []
    assert items_of(tmp_path / "store.sqlite3")[("prefs", "score")]["updatedAt"] == 9


def test_a_stale_edit_is_decided_by_the_policy_and_the_decision_is_logged(server, tmp_path):
    phone, tablet = tmp_path / "phone", tmp_path / "tablet"
    make_store(phone / "store.sqlite3", learning_items(5))
    with device(server, phone) as first:
        first.migrate()
    with device(server, tablet) as second:
        second.sync()
    with LocalStore(phone / "store.sqlite3") as store:
        store.put("flashcards", "item-000001", {"box": 1}, updated_at=1_700_000_000_000)
    with LocalStore(tablet / "store.sqlite3") as store:
        store.put("flashcards", "item-000001", {"box": 4}, updated_at=1_700_000_600_000)
    with device(server, phone) as first:
        first.sync()
    policy = ConflictPolicy(default="newest_wins")
    with device(server, tablet, conflicts=policy) as second:
        result = second.sync()
    assert result.resolutions_by_kind == {"newest_wins": 1} and result.verified
    assert cloud_of(server)[("flashcards", "item-000001")]["data"] == {"box": 4}
    with LocalStore(tablet / "store.sqlite3") as store, store._reading("read") as conn:
        log = conn.execute("SELECT choice, strategy, local, server FROM sync_decisions").fetchall()
    assert [(choice, kind) for choice, kind, _, _ in log] == [("local", "newest_wins")]
    assert json.loads(log[0][3])["data"] == {"box": 1}  # what was overridden is kept


def test_a_manual_conflict_waits_for_the_app_and_its_decision_is_pushed(server, tmp_path):
    phone, tablet = tmp_path / "phone", tmp_path / "tablet"
    make_store(phone / "store.sqlite3", learning_items(3))
    with device(server, phone) as first:
        first.migrate()
    with device(server, tablet) as second:
        second.sync()
    with LocalStore(phone / "store.sqlite3") as store:
        store.put("prefs", "theme", {"v": "light"})
    with LocalStore(tablet / "store.sqlite3") as store:
        store.put("prefs", "theme", {"v": "dark"})
    with device(server, phone) as first:
        first.sync()
    with device(server, tablet, conflicts=ConflictPolicy(default="manual")) as second:
        waiting = second.sync()
        assert (waiting.pending_conflicts, waiting.pending_changes, waiting.verified) == (
            1,
            1,
            False,
        )
        (conflict,) = second.pending_conflicts()
        assert conflict.server["data"] == {"v": "light"}
        second.resolve_conflict(conflict.conflict_id, "merged", {"v": "dark", "auto": True})
        done = second.sync()
    assert done.verified and done.pending_conflicts == 0
    assert cloud_of(server)[("prefs", "theme")]["data"] == {"v": "dark", "auto": True}


def test_the_running_checksum_equals_a_full_recomputation_on_both_sides(server, tmp_path):
    make_store(tmp_path / "store.sqlite3", learning_items(25))
    with device(server, tmp_path) as client:
        client.migrate()
        with LocalStore(tmp_path / "store.sqlite3") as store:
            store.put_many({"collection": "c", "key": f"k{i}", "data": {"i": i}} for i in range(7))
        events: list[object] = []
        client.hooks = type(client.hooks)(on_event=events.append)
        result = client.sync(full=True)
    assert result.full and result.verified
    assert result.local_checksum == result.cloud_checksum
    with LocalStore(tmp_path / "store.sqlite3") as store:
        digests = [
            __import__("sdk.contract", fromlist=["item_digest"]).item_digest(i)
            for i in store.iter_items()
        ]
    assert result.local_checksum == multiset_hex(multiset_checksum(digests))
    assert any(isinstance(e, SyncCompleted) and e.verified for e in events)
    assert not any(isinstance(e, RemoteChangesApplied) for e in events)


@pytest.mark.parametrize("kill_at", ["sync.push.journaled", "sync.push.answered"])
def test_a_push_interrupted_before_or_after_the_answer_is_applied_once(server, tmp_path, kill_at):
    make_store(tmp_path / "store.sqlite3", learning_items(5))
    with device(server, tmp_path) as client:
        client.migrate()
        with LocalStore(tmp_path / "store.sqlite3") as store:
            store.put("c", "once", {"v": 1})
        _failpoints.enable(kill_at, "raise")
        try:
            with pytest.raises(_failpoints.FailpointError):
                client.sync()
        finally:
            _failpoints.reset()
        result = client.sync()
    assert result.verified and result.pending_changes == 0
    pushes = server.storage._rows("SELECT count(*) FROM sync_pushes WHERE user_id = 'alice'")
    assert pushes == [(1,)]
    assert cloud_of(server)[("c", "once")]["data"] == {"v": 1}


def test_an_edit_of_a_migrated_item_made_around_the_sdk_is_pushed_without_a_conflict(
    server, tmp_path
):
    import sqlite3

    make_store(tmp_path / "store.sqlite3", learning_items(10))
    with device(server, tmp_path, conflicts=ConflictPolicy(default="manual")) as client:
        client.migrate()
        with sqlite3.connect(tmp_path / "store.sqlite3") as raw:  # the app's own SQL
            raw.execute(
                "UPDATE items SET data = ?, updated_at = 9 WHERE key = 'item-000004'",
                ['{"score": 99}'],
            )
            raw.execute("DELETE FROM items WHERE key = 'item-000005'")
        assert detect_local(tmp_path / "store.sqlite3").pending_changes == 1  # the delete:
        result = client.sync()  # becomes a tombstone when the sync settles it
    assert (result.pushed, result.resolutions_by_kind, result.verified) == (2, {}, True)
    cloud = cloud_of(server)
    assert cloud[("flashcards", "item-000004")]["data"] == {"score": 99}
    assert cloud[("lesson_progress", "item-000005")]["deleted"] is True
