"""The plan: ``POST /plan`` on the server, and ``MigrationClient.plan()`` predicting what
the migration then reports, with only keys and digests leaving the device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import T0, Server, items_of, running_server

from backend_stub import seed_cloud_items
from sdk import (
    ConflictPolicy,
    LocalStore,
    MigrationClient,
    MigrationOptions,
    MigrationOutcome,
    RetryPolicy,
)
from sdk.contract import Limits, PlanResponse, item_digest


@pytest.fixture
def api(tmp_path: Path):
    with running_server(tmp_path / "server", limits=Limits(max_batch_items=5)) as server:
        yield server


def entry(item: Any, digest: str | None = None) -> dict[str, str]:
    return {
        "collection": item["collection"],
        "key": item["key"],
        "digest": digest or item_digest(item).hex(),
    }


def post_plan(server: Server, body: Any, user: str = "alice", **headers: str):
    return server.client.post(
        server.url("/plan", user), json=body, headers=server.auth("alice", **headers)
    )


def test_the_plan_endpoint_classifies_each_key_and_hands_back_the_clouds_conflicting_version(
    api: Server,
):
    local = items_of(4)
    seed_cloud_items(
        api.storage,
        "alice",
        [local[0], {**local[1], "data": {"n": "cloud"}}, {**local[2], "deleted": True}],
        device_id="tablet",
        now=T0,
    )

    response = post_plan(api, {"entries": [entry(i) for i in local]})

    assert response.status_code == 200, response.text
    answer = PlanResponse.model_validate(response.json())
    assert answer.outcomes == ["unchanged", "conflict", "conflict", "new"]
    assert (answer.new_count, answer.unchanged_count, answer.conflict_count) == (1, 1, 2)
    assert [c.key for c in answer.conflicts] == ["k0001", "k0002"]
    assert answer.conflicts[0].server.data == {"n": "cloud"}
    assert (answer.conflicts[0].server.version, answer.conflicts[0].server.device_id) == (
        1,
        "tablet",
    )
    assert answer.conflicts[1].server.deleted is True
    assert answer.server_time == api.clock.now
    # Read-only: no session, no event.
    assert api.storage.latest_session("alice") is None
    assert api.event_types() == []


PAGE = [{"collection": "c", "key": f"k{i}", "digest": "0" * 64} for i in range(6)]


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        pytest.param({"entries": PAGE[:5]}, {}, 200, None, id="at the limit"),
        pytest.param({"entries": PAGE}, {}, 413, "payload-too-large", id="over the limit"),
        pytest.param(
            {"entries": [PAGE[1], PAGE[0]]}, {}, 422, "validation-failed", id="not ascending"
        ),
        pytest.param({"entries": [PAGE[0], PAGE[0]]}, {}, 422, "validation-failed", id="duplicate"),
        pytest.param(
            {"entries": [{**PAGE[0], "data": {}}]}, {}, 422, "validation-failed", id="data sent"
        ),
        pytest.param(
            {"entries": [{**PAGE[0], "digest": "XY"}]}, {}, 422, "validation-failed", id="digest"
        ),
        pytest.param(
            {"entries": [{**PAGE[0], "collection": "../x"}]},
            {},
            422,
            "validation-failed",
            id="collection",
        ),
        pytest.param({"entries": []}, {"Content-Type": "text/plain"}, 415, None, id="media type"),
        pytest.param(
            {"entries": []}, {"Authorization": "Bearer nope"}, 401, "unauthenticated", id="token"
        ),
    ],
)
def test_the_plan_endpoint_refuses_bad_pages_with_problem_details(
    api: Server, body, headers, status, code
):
    response = post_plan(api, body, **headers)

    assert response.status_code == status, response.text
    if status != 200:
        assert response.headers["content-type"].startswith("application/problem+json")
        if code:
            assert response.json()["code"] == code


def test_the_plan_endpoint_answers_only_for_the_tokens_own_user(api: Server):
    response = post_plan(api, {"entries": []}, user="bob")

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


def test_a_broken_json_plan_body_is_a_400(api: Server):
    response = api.client.post(
        api.url("/plan"), content=b"{", headers=api.auth(**{"Content-Type": "application/json"})
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid-request"


# --------------------------------------------------------------------------- the SDK


def client_for(server, store: Path, user: str, tmp_path: Path, policy: ConflictPolicy):
    return MigrationClient(
        http_client=server.client,
        user_id=user,
        token=server.token(user),
        store_path=store,
        options=MigrationOptions(batch_size=7, cache_dir=tmp_path / "cache", conflicts=policy),
        retry=RetryPolicy.none(),
    )


def test_the_plan_predicts_per_collection_what_the_migration_then_reports(server, tmp_path):
    local = (
        items_of(30, collection="progress", updated_at=T0 + 120_000, score=1)
        + items_of(12, collection="prefs")
        + items_of(5, collection="cards")
    )
    store = tmp_path / "store.sqlite3"
    with LocalStore(store) as s:
        s.put_many(local)
    seed_cloud_items(
        server.storage,
        "pia",
        [
            {**i, "data": {"n": -1, "score": 5}, "updatedAt": T0} for i in local[:10]
        ]  # progress: 10 conflicts
        + local[10:20]  # progress: 10 unchanged
        + [{**i, "updatedAt": T0 + 60_000} for i in local[30:36]]  # prefs: 6 newer in cloud
        + [{**i, "deleted": True} for i in local[42:44]]  # cards: 2 deleted in the cloud
        + [
            {
                "collection": "cards",
                "key": "cloud-only",
                "data": {},
                "updatedAt": 1,
                "deleted": False,
            }
        ],
        device_id="tablet",
    )
    policy = ConflictPolicy(
        per_collection={"progress": "field_merge", "prefs": "newest_wins", "cards": "manual"}
    )
    requests: list[dict[str, Any]] = []

    def record(request) -> None:
        requests.append({"path": request.url.path, "body": request.read()})

    server.client.event_hooks["request"].append(record)
    with client_for(server, store, "pia", tmp_path, policy) as client:
        plan = client.plan()
        planned = list(requests)
        first = client.migrate()
        for conflict in client.pending_conflicts():
            client.resolve_conflict(conflict.conflict_id, "server")
        result = client.migrate()

    assert [r["path"] for r in planned] == ["/api/migration/pia/plan"]
    sent = json.loads(planned[0]["body"])["entries"]
    assert {tuple(sorted(e)) for e in sent} == {("collection", "digest", "key")}
    assert plan.collections["progress"].conflicts == 10
    assert plan.collections["progress"].resolutions == {"field_merge": 10}
    assert plan.collections["progress"].choices == {"merged": 10}
    assert plan.collections["prefs"].choices == {"server": 6}
    assert plan.collections["cards"].choices == {"pending": 2}
    assert (first.outcome, first.pending_conflicts) == (MigrationOutcome.AWAITING_RESOLUTION, 2)
    assert plan.pending_conflicts == first.pending_conflicts
    assert result.outcome is MigrationOutcome.COMPLETED
    assert (plan.new_items, plan.unchanged_items, plan.conflicts) == (
        result.new_items,
        result.unchanged_items,
        result.conflicts,
    )
    assert plan.resolutions_by_kind == result.resolutions_by_kind
    assert {n: c.items for n, c in plan.collections.items()} == result.collections
    assert plan.item_count == result.item_count == len(local)


def test_the_plan_shrinks_its_pages_to_a_servers_smaller_limit(api: Server, tmp_path):
    store = tmp_path / "store.sqlite3"
    with LocalStore(store) as s:
        s.put_many(items_of(12))
    sizes: list[int] = []

    def count(request) -> None:
        sizes.append(len(json.loads(request.read())["entries"]))

    api.client.event_hooks["request"].append(count)
    with MigrationClient(
        http_client=api.client,
        user_id="alice",
        token=api.auth()["Authorization"].split()[1],
        store_path=store,
        retry=RetryPolicy.none(),
    ) as client:
        plan = client.plan()

    assert sizes == [12, 5, 5, 2]  # refused once (413 naming 5 entries), then pages of 5
    assert plan.new_items == 12


def test_planning_writes_nothing_on_either_side(server, tmp_path):
    store = tmp_path / "store.sqlite3"
    with LocalStore(store) as s:
        s.put_many(items_of(3))
    before = store.read_bytes()

    with client_for(server, store, "quinn", tmp_path, ConflictPolicy()) as client:
        plan = client.plan()

    assert (plan.new_items, plan.conflicts) == (3, 0)
    assert store.read_bytes() == before
    assert server.storage.latest_session("quinn") is None
    assert server.storage.events(user_id="quinn") == []
    assert not (tmp_path / "cache").exists()


def test_the_plan_of_a_missing_or_empty_store_is_empty_and_asks_nothing(server, tmp_path):
    store = tmp_path / "store.sqlite3"
    asked: list[str] = []
    server.client.event_hooks["request"].append(lambda r: asked.append(r.url.path))
    with client_for(server, store, "ray", tmp_path, ConflictPolicy()) as client:
        missing = client.plan()
        LocalStore(store).close()
        empty = client.plan()

    assert missing.collections == empty.collections == {}
    assert (empty.item_count, empty.clock_offset_ms) == (0, None)
    assert asked == []


def test_the_plan_pages_a_large_store_within_the_servers_limit(tmp_path):
    with running_server(tmp_path / "server", limits=Limits(max_batch_items=1000)) as srv:
        store = tmp_path / "store.sqlite3"
        with LocalStore(store) as s:
            s.put_many(items_of(2_345))
        seed_cloud_items(srv.storage, "sam", items_of(2_345)[::2])
        pages: list[int] = []

        def count(request) -> None:
            pages.append(len(json.loads(request.read())["entries"]))

        srv.client.event_hooks["request"].append(count)
        with MigrationClient(
            http_client=srv.client,
            user_id="sam",
            token=srv.auth("sam")["Authorization"].split()[1],
            store_path=store,
            retry=RetryPolicy.none(),
        ) as client:
            plan = client.plan()

    assert pages == [1000, 1000, 345]
    assert (plan.unchanged_items, plan.new_items) == (1173, 1172)
