"""Properties of conflict resolution over random local and cloud datasets, for every
strategy: decisions are deterministic and idempotent; after the migration the cloud holds
what the store holds for every migrated key; no key of either side is lost unless a
tombstone wins by the declared policy; and the plan predicted what the migration reported.

Timestamps are whole minutes apart (or equal), far outside the clock's uncertainty, so
the expected winners can be written down independently of the SDK's code.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend_stub import seed_cloud_items
from sdk import (
    Conflict,
    ConflictPolicy,
    LocalStore,
    MigrationClient,
    MigrationOptions,
    MigrationOutcome,
    RetryPolicy,
)
from sdk._conflicts.policy import ClockEstimate, decide
from sdk.contract import Item, canonical_json

T0 = 1_700_000_000_000
MINUTE = 60_000
KEYS = [("progress", "a"), ("progress", "b"), ("progress", "c"), ("prefs", "x"), ("prefs", "y")]
Key = tuple[str, str]

# --------------------------------------------------------------------------- data


def items_for(collection: str, key: str) -> st.SearchStrategy[Item]:
    stamp = st.integers(0, 3).map(lambda m: T0 + m * MINUTE)
    live = st.builds(
        lambda data, at: Item(
            collection=collection, key=key, data=data, updatedAt=at, deleted=False
        ),
        st.fixed_dictionaries(
            {
                "score": st.integers(0, 5),
                "streak": st.integers(0, 3),
                "completed": st.lists(st.sampled_from(["l1", "l2", "l3"]), unique=True),
                "title": st.sampled_from(["a", "b"]),
            },
            optional={"note": st.sampled_from(["x", "y"])},
        ),
        stamp,
    )
    tombstone = stamp.map(
        lambda at: Item(collection=collection, key=key, data={}, updatedAt=at, deleted=True)
    )
    return st.one_of(live, live, tombstone)


@st.composite
def datasets(draw: st.DrawFn) -> tuple[dict[Key, Item], dict[Key, Item]]:
    """(local, cloud): per key absent on one side, identical, or drawn independently."""
    local: dict[Key, Item] = {}
    cloud: dict[Key, Item] = {}
    for collection, key in KEYS:
        relation = draw(st.sampled_from(["local only", "cloud only", "same", "both", "both"]))
        if relation != "cloud only":
            local[(collection, key)] = draw(items_for(collection, key))
        if relation == "same":
            cloud[(collection, key)] = local[(collection, key)]
        elif relation != "local only":
            cloud[(collection, key)] = draw(items_for(collection, key))
    if not local:
        local[KEYS[0]] = draw(items_for(*KEYS[0]))
    return local, cloud


# --------------------------------------------------------------------------- the policies


def by_score(conflict: Conflict) -> Any:
    """An integrator's callback: deletions win, else the better score, ties merged."""
    mine, theirs = conflict.local, conflict.server
    if mine["deleted"] or theirs["deleted"]:
        return "local" if mine["deleted"] else "server"
    if mine["data"]["score"] == theirs["data"]["score"]:
        return {**theirs["data"], "title": "both"}
    return "local" if mine["data"]["score"] > theirs["data"]["score"] else "server"


#: What the app's UI decides for a conflict waiting for it, by key.
APP_CHOICE = {"a": "local", "b": "server", "c": "merged", "x": "server", "y": "local"}
APP_MERGE = {"score": 9, "merged": True}

POLICIES = {
    "server_wins": ConflictPolicy(),
    "local_wins": ConflictPolicy(default="local_wins"),
    "newest_wins": ConflictPolicy(default="newest_wins"),
    "field_merge": ConflictPolicy(default="field_merge"),
    "callback": ConflictPolicy(default=by_score),
    "manual": ConflictPolicy(default="manual"),
    "per collection": ConflictPolicy(
        per_collection={"progress": "field_merge", "prefs": "newest_wins"}, fallback="manual"
    ),
}


def merged_item(local: Item, cloud: Item, data: dict[str, Any]) -> Item:
    # A merge holding one side's data is that side as it is, the cloud's first.
    if not cloud["deleted"] and data == cloud["data"]:
        return cloud
    if not local["deleted"] and data == local["data"]:
        return local
    return Item(
        collection=local["collection"],
        key=local["key"],
        data=data,
        updatedAt=max(local["updatedAt"], cloud["updatedAt"]),
        deleted=False,
    )


def newest(local: Item, cloud: Item, tie: str) -> str:
    if local["updatedAt"] == cloud["updatedAt"]:
        return tie
    return "local" if local["updatedAt"] > cloud["updatedAt"] else "server"


def field_merge(local: Item, cloud: Item, tie: str) -> Item:
    if local["deleted"] or cloud["deleted"]:
        # Decided by age; a tie is flagged and goes to the policy's fallback.
        winner = newest(local, cloud, tie)
        return app(local, cloud) if winner == "app" else local if winner == "local" else cloud
    mine, theirs = local["data"], cloud["data"]
    data: dict[str, Any] = {}
    for name in mine.keys() | theirs.keys():
        if name not in theirs or name not in mine or mine[name] == theirs[name]:
            data[name] = mine[name] if name not in theirs else theirs[name]
        elif name in ("score", "streak"):
            data[name] = max(mine[name], theirs[name])
        elif name == "completed":
            data[name] = theirs[name] + [x for x in mine[name] if x not in theirs[name]]
        else:
            data[name] = mine[name] if local["updatedAt"] > cloud["updatedAt"] else theirs[name]
    return merged_item(local, cloud, data)


def app(local: Item, cloud: Item) -> Item:
    choice = APP_CHOICE[local["key"]]
    if choice == "merged":
        return merged_item(local, cloud, APP_MERGE)
    return local if choice == "local" else cloud


def expected(name: str, local: Item, cloud: Item) -> Item:
    """The item both sides hold after a conflict, written from the documentation."""
    if local["deleted"] == cloud["deleted"] and (
        local["deleted"] or local["data"] == cloud["data"]
    ):
        return cloud  # equal data is never a conflict: the cloud's copy stands, for any policy
    if name == "server_wins":
        return cloud
    if name == "local_wins":
        return local
    if name == "newest_wins":
        return local if newest(local, cloud, tie="server") == "local" else cloud
    if name == "field_merge":
        return field_merge(local, cloud, tie="server")
    if name == "callback":
        answer = by_score(
            Conflict(conflict_id="", collection="", key="", local=local, server=cloud)
        )
        if isinstance(answer, dict):
            return merged_item(local, cloud, answer)
        return local if answer == "local" else cloud
    if name == "manual":
        return app(local, cloud)
    assert name == "per collection"
    if local["collection"] == "progress":
        return field_merge(local, cloud, tie="app")  # the fallback is manual
    winner = newest(local, cloud, tie="app")
    return app(local, cloud) if winner == "app" else (local if winner == "local" else cloud)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", list(POLICIES))
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=datasets())
def test_after_migrating_both_sides_agree_nothing_is_lost_and_the_plan_was_right(
    server, tmp_path, name, data
):
    local_before, cloud_before = data
    user = f"p{uuid.uuid4().hex[:12]}"
    folder = tmp_path / user
    store = folder / "store.sqlite3"
    with LocalStore(store) as s:
        s.put_many(local_before.values())
    seed_cloud_items(server.storage, user, cloud_before.values(), device_id="tablet")
    with client(server, store, user, folder, POLICIES[name]) as c:
        plan = c.plan()
        result = c.migrate()
        waited = result.pending_conflicts
        for conflict in c.pending_conflicts():
            choice = APP_CHOICE[conflict.key]
            c.resolve_conflict(
                conflict.conflict_id, choice, APP_MERGE if choice == "merged" else None
            )
        if result.outcome is MigrationOutcome.AWAITING_RESOLUTION:
            result = c.migrate()
        again = c.migrate()

    assert result.outcome is MigrationOutcome.COMPLETED and result.verified
    assert again.outcome is MigrationOutcome.ALREADY_MIGRATED
    local_after = local_of(store)
    everything = list(local_before.keys() | cloud_before.keys())
    cloud_after = {k: v.wire() for k, v in server.storage.cloud_items(user, everything).items()}
    # The cloud holds what the store holds, for every migrated key.
    assert {k: cloud_after.get(k) for k in local_before} == {
        k: local_after[k] for k in local_before
    }
    for key in everything:
        mine, theirs, final = local_before.get(key), cloud_before.get(key), cloud_after.get(key)
        # No key is lost; a tombstone stands only where one side held it and won.
        assert final is not None
        if final["deleted"]:
            assert final in (mine, theirs)
        if mine is None:
            assert final == theirs  # the cloud's own items are left alone
        elif theirs is None or theirs == mine:
            assert final == mine
        else:
            assert final == expected(name, mine, theirs), key
    # The plan predicted what the migration reported.
    assert (plan.new_items, plan.unchanged_items, plan.conflicts) == (
        result.new_items,
        result.unchanged_items,
        result.conflicts,
    )
    assert plan.resolutions_by_kind == dict(sorted(result.resolutions_by_kind.items()))
    assert plan.pending_conflicts == waited
    assert {n: c.items for n, c in plan.collections.items()} == result.collections
    assert sorted((f.collection, f.key, f.reason) for f in plan.flagged) == sorted(
        (f.collection, f.key, f.reason) for f in result.flagged
    )


BUILT_IN = [p for n, p in POLICIES.items() if n != "callback"]


@settings(max_examples=300, deadline=None)
@given(
    local=st.sampled_from(KEYS).flatmap(lambda k: items_for(*k)),
    cloud_stamp=st.integers(0, 3),
    cloud_data=items_for("progress", "a"),
    policy=st.sampled_from(BUILT_IN),
    offset=st.integers(-2 * MINUTE, 2 * MINUTE),
    uncertainty=st.integers(0, 5_000),
)
def test_a_decision_is_deterministic_and_deciding_its_outcome_again_changes_nothing(
    local, cloud_stamp, cloud_data, policy, offset, uncertainty
):
    cloud = Item(
        collection=local["collection"],
        key=local["key"],
        data=cloud_data["data"],
        updatedAt=T0 + cloud_stamp * MINUTE,
        deleted=cloud_data["deleted"],
    )
    clock = ClockEstimate(offset, uncertainty)
    now = T0 + 2 * MINUTE  # some stamps lie in the future of this clock
    conflict = Conflict(
        conflict_id="c", collection=local["collection"], key=local["key"], local=local, server=cloud
    )

    first = decide(conflict, policy, clock, now_ms=now)
    second = decide(conflict, policy, clock, now_ms=now)

    assert first == second
    assert conflict.local == local and conflict.server == cloud  # inputs untouched
    if first.item is None:
        assert first.choice == "pending"
        return
    # The outcome against the same cloud version decides to itself: a fixed point.
    winner = first.item
    if canonical_json(winner) != canonical_json(cloud):
        again = decide(
            Conflict(
                conflict_id="c",
                collection=winner["collection"],
                key=winner["key"],
                local=winner,
                server=cloud,
            ),
            policy,
            clock,
            now_ms=now,
        )
        assert again.item == winner


# --------------------------------------------------------------------------- helpers


def client(server, store: Path, user: str, folder: Path, policy: ConflictPolicy):
    return MigrationClient(
        http_client=server.client,
        user_id=user,
        token=server.token(user),
        store_path=store,
        options=MigrationOptions(batch_size=3, cache_dir=folder / "cache", conflicts=policy),
        retry=RetryPolicy.none(),
    )


def local_of(store: Path) -> dict[Key, Item]:
    with LocalStore(store, create=False) as s:
        return {(i["collection"], i["key"]): i for i in s.iter_items()}
