"""A stateful property test of the sync: devices that write offline, sync in any order and
crash anywhere in a push or a pull, then all converge on the cloud's data, and no write
is lost without a policy decision that the decision log records."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from server_fixtures import TestClient

from backend_stub import Settings, create_app, issue_token
from sdk import (
    ConflictPolicy,
    LocalStore,
    MigrationClient,
    MigrationOptions,
    RetryPolicy,
    _failpoints,
)
from sdk._store import changes as _changes
from sdk.contract import item_digest, multiset_checksum, multiset_hex

KEYS = [("cards", f"k{i}") for i in range(4)] + [("prefs", "theme")]
POLICIES = ["server_wins", "local_wins", "newest_wins"]


class Devices(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="sync-prop-"))
        self.settings = Settings(data_dir=self.tmp / "server")
        self.http = TestClient(create_app(self.settings), base_url="http://testserver")
        self.http.__enter__()
        self.user = f"prop{uuid.uuid4().hex[:10]}"
        self.stores: list[Path] = []
        self.policies: list[str] = []
        # (device, key) -> the device's last write: what must not be stranded.
        self.last_write: dict[tuple[int, tuple[str, str]], dict[str, object]] = {}
        # Every version of every key the cloud was seen to hold, after each step.
        self.cloud_seen: dict[tuple[str, str], list[dict[str, object]]] = {}
        self.clock = 1_700_000_000_000

    def teardown(self) -> None:
        _failpoints.reset()
        self.http.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def client(self, device: int) -> MigrationClient:
        return MigrationClient(
            http_client=self.http,
            user_id=self.user,
            token=issue_token(self.user, self.settings.jwt_secret),
            store_path=self.stores[device],
            options=MigrationOptions(
                batch_size=7,
                cache_dir=self.tmp / f"cache{device}",
                conflicts=ConflictPolicy(default=self.policies[device]),  # type: ignore[arg-type]
            ),
            retry=RetryPolicy.none(),
        )

    def observe_cloud(self) -> None:
        storage = self.http.app.state.storage  # type: ignore[attr-defined]
        for s in storage.pull_page(self.user, after=None, until=None, limit=10**6).items:
            seen = self.cloud_seen.setdefault((s.item.collection, s.item.key), [])
            version = s.item.wire()
            if version not in seen:
                seen.append(version)

    @initialize(
        policies=st.lists(st.sampled_from(POLICIES), min_size=2, max_size=4),
        first=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True),
    )
    def devices(self, policies: list[str], first: list[tuple[str, str]]) -> None:
        self.policies = policies
        for device in range(len(policies)):
            self.stores.append(self.tmp / f"device{device}" / "store.sqlite3")
        # The first device migrates some data; the others sign in and download it.
        with LocalStore(self.stores[0]) as store:
            for collection, key in first:
                store.put(collection, key, {"w": "initial"}, updated_at=self.tick())
        for device in range(len(policies)):
            with self.client(device) as client:
                client.sync()
        self.observe_cloud()

    def tick(self) -> int:
        self.clock += 1000
        return self.clock

    @rule(data=st.data(), key=st.sampled_from(KEYS), delete=st.booleans())
    def write_offline(self, data: st.DataObject, key: tuple[str, str], delete: bool) -> None:
        device = data.draw(st.integers(0, len(self.stores) - 1), label="device")
        with LocalStore(self.stores[device]) as store:
            if delete:
                store.delete(*key, updated_at=self.tick())
            else:
                store.put(*key, {"w": uuid.uuid4().hex[:8]}, updated_at=self.tick())
            written = store.get(*key)
        assert written is not None
        self.last_write[(device, key)] = dict(written)

    @rule(data=st.data(), key=st.sampled_from(KEYS), delete=st.booleans())
    def write_around_the_sdk(self, data: st.DataObject, key: tuple[str, str], delete: bool) -> None:
        """The app writes with plain SQL: the store's triggers must record it all the same."""
        device = data.draw(st.integers(0, len(self.stores) - 1), label="device")
        token = uuid.uuid4().hex[:8]
        conn = sqlite3.connect(self.stores[device])
        try:
            if delete:
                changed = conn.execute(
                    "DELETE FROM items WHERE collection = ? AND key = ?", key
                ).rowcount
            else:
                changed = conn.execute(
                    "UPDATE items SET data = ?, updated_at = ?, deleted = 0"
                    " WHERE collection = ? AND key = ?",
                    (f'{{ "w": "{token}" }}', self.tick(), *key),
                ).rowcount
            conn.commit()
        finally:
            conn.close()
        if changed:
            self.last_write[(device, key)] = {
                "collection": key[0],
                "key": key[1],
                "data": {} if delete else {"w": token},
                "deleted": delete,
            }

    @rule(data=st.data())
    def sync(self, data: st.DataObject) -> None:
        device = data.draw(st.integers(0, len(self.stores) - 1), label="device")
        with self.client(device) as client:
            client.sync()
        self.observe_cloud()

    @rule(
        data=st.data(),
        point=st.sampled_from(_failpoints.SYNC_NAMES),
        at=st.integers(1, 3),
    )
    def crash_during_sync(self, data: st.DataObject, point: str, at: int) -> None:
        device = data.draw(st.integers(0, len(self.stores) - 1), label="device")
        _failpoints.enable(point, "raise", at=at)
        try:
            with self.client(device) as client:
                client.sync()
        except _failpoints.FailpointError:
            pass  # killed there: whatever the store and server hold is what a crash leaves
        finally:
            _failpoints.reset()
        self.observe_cloud()

    @precondition(lambda self: bool(self.stores))
    @invariant()
    def stores_stay_consistent(self) -> None:
        # The running checksum always equals a recomputation, whatever was interrupted,
        # once what the triggers recorded of writes around the SDK is settled.
        for path in self.stores:
            if not path.exists():
                continue
            with LocalStore(path) as store:
                with store._writing("settle") as conn:
                    _changes.repair(conn)
                digests = [item_digest(i) for i in store.iter_items()]
                with store._reading("check") as conn:
                    (kept,) = conn.execute(
                        "SELECT value FROM store_meta WHERE key = 'local_checksum'"
                    ).fetchone()
            assert kept == multiset_hex(multiset_checksum(digests))

    def teardown_checks(self) -> None:
        # Quiescence: every device syncs until nothing waits anywhere.
        for _round in range(3):
            for device in range(len(self.stores)):
                with self.client(device) as client:
                    client.sync()
                self.observe_cloud()
        storage = self.http.app.state.storage  # type: ignore[attr-defined]
        cloud = {
            (s.item.collection, s.item.key): s.item.wire()
            for s in storage.pull_page(self.user, after=None, until=None, limit=10**6).items
        }
        for device, path in enumerate(self.stores):
            with self.client(device) as client:
                status = client.verify(full=True)
            assert status.verified, (device, status)
            with LocalStore(path) as store:
                mine = {(i["collection"], i["key"]): i for i in store.iter_items()}
                with store._reading("log") as conn:
                    overridden = [
                        json.loads(local)
                        for (local,) in conn.execute("SELECT local FROM sync_decisions")
                    ]
            assert mine == cloud, device
            for (writer, key), write in self.last_write.items():
                if writer != device:
                    continue
                reached = _same(write, cloud.get(key)) or any(
                    _same(write, seen) for seen in self.cloud_seen.get(key, [])
                )
                decided = any(_same(write, lost) for lost in overridden)
                assert reached or decided, f"device {device}'s write {write} was stranded"


def _same(write: dict[str, object], other: object) -> bool:
    if not isinstance(other, dict):
        return False
    if write["deleted"] or other["deleted"]:
        return bool(write["deleted"]) and bool(other["deleted"])
    return write["data"] == other["data"]


class DevicesWithChecks(Devices):
    def teardown(self) -> None:
        try:
            self.teardown_checks()
        finally:
            super().teardown()


DevicesWithChecks.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_devices_converge_and_no_write_is_stranded = DevicesWithChecks.TestCase
