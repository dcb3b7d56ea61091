"""The sync endpoints against the real app, on both storage backends: pushes applied once,
pulls that never miss a change, and a head checksum that always equals the items'.

Every scenario runs on SQLite and on the aws backend (moto); the aws runs stay small
(a few items each). The last tests are aws only: a migration commit whose roll-forward
stopped, read through and resumed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aws_fixtures import AwsBackend, Backend
from server_fixtures import T0, Server, items_of, make_plan, running_server

from backend_stub.storage.aws import AwsStorage
from backend_stub.storage.aws_cloud import CloudItems
from backend_stub.storage.aws_slices import load_record, save_record
from sdk.contract import (
    PROBLEM_CONTENT_TYPE,
    Item,
    Limits,
    item_digest,
    multiset_checksum,
    multiset_hex,
)


@pytest.fixture
def server(tmp_path: Path, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path, backend=backend) as running:
        yield running


def change(
    key: str,
    data: dict[str, Any],
    *,
    base: int | None = None,
    deleted: bool = False,
    collection: str = "lessons",
) -> dict[str, Any]:
    return {
        "collection": collection,
        "key": key,
        "data": data,
        "updatedAt": T0,
        "deleted": deleted,
        "baseSeq": base,
    }


def push(
    server: Server,
    changes: list[dict[str, Any]],
    *,
    push_id: str | None = None,
    device: str = "phone-1",
    user: str = "alice",
    token_of: str | None = None,
) -> httpx.Response:
    return server.client.post(
        server.url("/sync/push", user),
        json={
            "pushId": push_id or f"push-{uuid.uuid4().hex[:12]}",
            "deviceId": device,
            "changes": changes,
        },
        headers=server.auth(token_of or user),
    )


def pushed(server: Server, changes: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    response = push(server, changes, **kwargs)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def pull(server: Server, **params: Any) -> httpx.Response:
    return server.client.get(
        server.url("/sync/changes"),
        params={k: v for k, v in params.items() if v is not None},
        headers=server.auth(),
    )


def pulled(server: Server, **params: Any) -> dict[str, Any]:
    response = pull(server, **params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def pull_all(server: Server, *, since: str | None = None, limit: int = 2) -> list[dict[str, Any]]:
    """Every page from ``since`` to the end; each page's order checked on the way."""
    pages = []
    while True:
        page = pulled(server, since=since, limit=limit)
        places = [(c["seq"], c["collection"], c["key"]) for c in page["changes"]]
        assert places == sorted(places) and len(set(places)) == len(places)
        pages.append(page)
        since = page["cursor"]
        if not page["hasMore"]:
            return pages


def state(server: Server, *, full: bool = False) -> dict[str, Any]:
    response = server.client.get(
        server.url("/sync/state"), params={"full": full}, headers=server.auth()
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def assert_consistent(server: Server) -> dict[str, Any]:
    """The running head equals the checksum recomputed from every item."""
    head, full = state(server), state(server, full=True)
    assert full["full"] is True
    assert (full["checksum"], full["itemCount"]) == (head["checksum"], head["itemCount"])
    return head


def checksum_of(*items: Item) -> str:
    return multiset_hex(multiset_checksum(item_digest(i) for i in items))


def item(key: str, data: dict[str, Any], *, deleted: bool = False) -> Item:
    return Item(collection="lessons", key=key, data=data, updatedAt=T0, deleted=deleted)


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["code"] == code


# --------------------------------------------------------------------------- push


def test_a_push_applies_new_and_based_changes_and_reports_equal_data_and_conflicts(
    server: Server,
) -> None:
    detect = server.client.get(server.url("/detect"), headers=server.auth())
    assert "sync" in detect.json()["capabilities"]
    assert state(server) == {
        "seq": 0,
        "checksum": "0" * 64,
        "itemCount": 0,
        "full": False,
        "changesSince": None,
    }

    first = pushed(server, [change("a", {"v": 1}), change("b", {"v": 1})])

    assert [(r["outcome"], r["seq"]) for r in first["results"]] == [("applied", 1)] * 2
    assert (first["seq"], first["itemCount"]) == (1, 2)
    assert first["checksum"] == checksum_of(item("a", {"v": 1}), item("b", {"v": 1}))

    second = pushed(
        server,
        # Equal data is never a conflict, even from a device that never saw the item.
        [change("a", {"v": 1}), change("b", {"v": 2}, base=1)],
        device="tablet",
    )

    assert [(r["outcome"], r["seq"]) for r in second["results"]] == [
        ("unchanged", 1),
        ("applied", 2),
    ]
    assert second["checksum"] == checksum_of(item("a", {"v": 1}), item("b", {"v": 2}))

    stale = pushed(server, [change("b", {"v": 3}, base=1)])

    (result,) = stale["results"]
    assert (result["outcome"], result["seq"]) == ("conflict", 2)
    assert result["server"]["data"] == {"v": 2}
    assert (result["server"]["version"], result["server"]["deviceId"]) == (2, "tablet")
    assert (stale["seq"], stale["checksum"]) == (2, second["checksum"])

    deleted = pushed(server, [change("a", {}, base=1, deleted=True)])

    assert [r["outcome"] for r in deleted["results"]] == ["applied"]
    head = assert_consistent(server)
    assert head["seq"] == deleted["seq"] == 3
    assert head["itemCount"] == 2  # a tombstone is an item
    assert head["checksum"] == checksum_of(item("a", {}, deleted=True), item("b", {"v": 2}))


def test_a_replayed_push_answers_the_stored_response_and_applies_once(server: Server) -> None:
    changes = [change("a", {"v": 1}), change("b", {"v": 1})]
    first = push(server, changes, push_id="push-0001")
    assert first.status_code == 200

    again = push(server, changes, push_id="push-0001")

    assert again.status_code == 200
    assert again.json() == {**first.json(), "replayed": True}
    assert state(server)["seq"] == 1
    assert [c["key"] for c in pulled(server)["changes"]] == ["a", "b"]

    other = push(server, [change("a", {"v": 9})], push_id="push-0001")

    assert_problem(other, 409, "push-mismatch")
    assert [c["data"] for c in pulled(server)["changes"]] == [{"v": 1}, {"v": 1}]
    assert assert_consistent(server)["seq"] == 1


def test_the_same_push_sent_twice_at_once_is_applied_once(server: Server) -> None:
    changes = [change("a", {"v": 1})]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: push(server, changes, push_id="push-twin"), range(2)))

    assert [a.status_code for a in answers] == [200, 200]
    assert sorted(a.json()["replayed"] for a in answers) == [False, True]
    assert assert_consistent(server)["seq"] == 1


def test_a_large_value_travels_whole_through_push_and_pull(server: Server) -> None:
    large = {"text": "x" * 70_000}  # past what the aws backend keeps inline

    answer = pushed(server, [change("big", large)])

    (only,) = pulled(server)["changes"]
    assert only["data"] == large
    assert answer["checksum"] == checksum_of(item("big", large))
    assert_consistent(server)


# --------------------------------------------------------------------------- pull


def test_pages_follow_the_cursor_and_an_item_rewritten_meanwhile_comes_again_later(
    server: Server,
) -> None:
    pushed(server, [change(f"k{i}", {"n": i}) for i in range(5)])  # seq 1
    pushed(server, [change("k5", {"n": 5})])  # seq 2
    first = pulled(server, limit=2)
    assert [(c["seq"], c["key"]) for c in first["changes"]] == [(1, "k0"), (1, "k1")]
    assert first["hasMore"] is True

    # Another device rewrites one item already pulled and one not pulled yet.
    pushed(server, [change("k0", {"n": 10}, base=1), change("k3", {"n": 13}, base=1)])
    rest = pull_all(server, since=first["cursor"], limit=2)

    seen = [(c["seq"], c["key"]) for page in rest for c in page["changes"]]
    assert seen == [(1, "k2"), (1, "k4"), (2, "k5"), (3, "k0"), (3, "k3")]
    assert (rest[-1]["cursor"], rest[-1]["seq"]) == ("3", 3)
    latest = {c["key"]: c["data"] for page in [first, *rest] for c in page["changes"]}
    assert latest == {"k0": {"n": 10}, "k1": {"n": 1}, "k2": {"n": 2}, "k3": {"n": 13}} | {
        "k4": {"n": 4},
        "k5": {"n": 5},
    }
    head = assert_consistent(server)
    assert all(page["checksum"] == head["checksum"] for page in rest)

    nothing_new = pulled(server, since="3")
    assert (nothing_new["changes"], nothing_new["cursor"]) == ([], "3")


def test_until_stops_a_pull_at_a_seq(server: Server) -> None:
    pushed(server, [change("a", {"v": 1}), change("b", {"v": 1})])  # seq 1
    pushed(server, [change("c", {"v": 1})])  # seq 2
    pushed(server, [change("a", {"v": 2}, base=1)])  # seq 3

    up_to_two = pulled(server, until=2)
    after_one = pulled(server, since="1", until=2)

    # a moved to seq 3: it is no longer at seq 1.
    assert [(c["seq"], c["key"]) for c in up_to_two["changes"]] == [(1, "b"), (2, "c")]
    assert (up_to_two["cursor"], up_to_two["hasMore"], up_to_two["seq"]) == ("2", False, 3)
    assert [(c["seq"], c["key"]) for c in after_one["changes"]] == [(2, "c")]
    assert after_one["cursor"] == "2"


# --------------------------------------------------------------------------- migration


def test_a_migration_commit_writes_all_its_items_at_one_seq_after_the_prior_head(
    server: Server,
) -> None:
    pushed(server, [change("x", {"v": 1}, collection="notes")])
    plan = make_plan(items_of(5), batch_size=2)
    session_id = server.started(plan)
    server.upload_all(session_id, plan)

    done = server.complete(session_id, plan.checksum)

    assert done.status_code == 200, done.text
    assert (done.json()["syncPriorSeq"], done.json()["syncSeq"]) == (1, 2)
    migrated = pull_all(server, since="1", limit=3)
    changes = [c for page in migrated for c in page["changes"]]
    assert {c["seq"] for c in changes} == {2}
    assert [c["key"] for c in changes] == [i["key"] for i in plan.items]
    assert [c["data"] for c in changes] == [i["data"] for i in plan.items]
    head = assert_consistent(server)
    assert (head["seq"], head["itemCount"]) == (2, 6)

    replayed = server.complete(session_id, plan.checksum)

    assert replayed.json()["syncSeq"] == 2
    assert state(server)["seq"] == 2


# --------------------------------------------------------------------------- refusals


def test_bad_sync_requests_are_refused_with_problems_and_change_nothing(
    tmp_path: Path, backend: Backend
) -> None:
    with running_server(tmp_path, backend=backend, limits=Limits(max_batch_items=3)) as server:
        assert_problem(pull(server, since="not-a-cursor"), 400, "invalid-request")
        assert_problem(pull(server, since="1.%%%"), 400, "invalid-request")
        assert_problem(push(server, [change("a", {})], token_of="bob"), 403, "forbidden")
        four = [change(f"k{i}", {}) for i in range(4)]
        assert_problem(push(server, four), 413, "payload-too-large")
        twice = [change("a", {"v": 1}), change("a", {"v": 2})]
        assert_problem(push(server, twice), 422, "validation-failed")

        assert state(server)["seq"] == 0
        assert pulled(server)["changes"] == []


# --------------------------------------------------------------------------- aws only


def aws_of(server: Server) -> AwsStorage:
    assert isinstance(server.storage, AwsStorage)
    return server.storage


def log_entries(storage: AwsStorage, user: str = "alice") -> list[str]:
    return [r["sk"]["S"] for r in storage.table.query(f"USER#{user}#SEQ")]


def stop_rolling_forward(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Make the next commit's roll-forward die ``where``: after copying two items, or
    after copying everything (log included) but before clearing its pointer."""
    if where == "mid-copy":
        apply = CloudItems._apply

        def two_then_die(self: CloudItems, ops: Any) -> int:
            apply(self, ops[:2])
            raise RuntimeError("the process died here")

        monkeypatch.setattr(CloudItems, "_apply", two_then_die)
    else:

        def die(*args: Any) -> None:
            raise RuntimeError("the process died here")

        # Everything copied (the log included); the pointer is not cleared.
        monkeypatch.setattr(CloudItems, "clear", die)


@pytest.mark.parametrize("where", ["mid-copy", "before-clear"])
def test_a_commit_whose_roll_forward_stopped_is_pulled_whole_and_moves_the_head_once(
    tmp_path: Path, aws_backend: AwsBackend, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    with running_server(tmp_path, backend=Backend("aws", aws_backend)) as server:
        storage = aws_of(server)
        pushed(server, [change("x", {"v": 1}, collection="notes")])  # seq 1
        plan = make_plan(items_of(5), batch_size=5)
        session_id = server.started(plan)
        server.upload_all(session_id, plan)
        stop_rolling_forward(monkeypatch, where)

        done = server.complete(session_id, plan.checksum)
        monkeypatch.undo()

        assert done.status_code == 200, done.text
        assert (done.json()["syncPriorSeq"], done.json()["syncSeq"]) == (1, 2)
        assert "rolling" in (storage.table.get("USER#alice", "PROFILE") or {})
        # Readers see the whole commit, once, at its seq.
        everything = [c for page in pull_all(server, limit=2) for c in page["changes"]]
        assert [(c["seq"], c["key"]) for c in everything] == [(1, "x")] + [
            (2, i["key"]) for i in plan.items
        ]
        head = assert_consistent(server)
        assert (head["seq"], head["itemCount"]) == (2, 6)

        # A push meanwhile waits (503), and queues the stalled job again, which finishes
        # the roll-forward; the head moved once for the commit.
        record = load_record(storage, session_id)
        assert record is not None
        save_record(storage, session_id, dataclasses.replace(record, updated_at=0.0), record.part)
        waiting = push(server, [change("x", {"v": 2}, base=1, collection="notes")])
        assert waiting.status_code == 503, waiting.text
        assert waiting.json()["code"] == "migration-committing"
        server.complete(session_id, plan.checksum)  # the fixture's worker drains the queue
        later = pushed(server, [change("x", {"v": 2}, base=1, collection="notes")])

        assert later["seq"] == 3
        assert "rolling" not in (storage.table.get("USER#alice", "PROFILE") or {})
        assert [(c["seq"], c["key"]) for c in pulled(server, since="2")["changes"]] == [(3, "x")]
        assert assert_consistent(server)["itemCount"] == 6
        # One log entry per item: the rewritten item's old place is gone.
        assert len(log_entries(storage)) == 6


def test_a_push_racing_another_commit_is_retried_from_fresh_reads(
    tmp_path: Path, aws_backend: AwsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_server(tmp_path, backend=Backend("aws", aws_backend)) as server:
        storage = aws_of(server)
        pushed(server, [change("a", {"v": 1})])  # seq 1
        other = aws_backend.open()
        synced = AwsStorage.synced_items
        raced = []

        def another_device_commits_first(self: AwsStorage, user: str, keys: Any) -> Any:
            found = synced(self, user, keys)
            if not raced:
                raced.append(True)
                with other.atomic():
                    current = other.synced_items("alice", [("lessons", "a")])
                    item_a = current[("lessons", "a")].item
                    other.put_cloud_items("alice", [item_a._replace(data='{"v":5}', version=2)], T0)
            return found

        monkeypatch.setattr(AwsStorage, "synced_items", another_device_commits_first)
        answer = pushed(server, [change("a", {"v": 2}, base=1)])

        # The first try lost at its flip; the retry saw the other commit: a conflict.
        assert raced
        assert [r["outcome"] for r in answer["results"]] == ["conflict"]
        assert answer["results"][0]["server"]["data"] == {"v": 5}
        assert answer["seq"] == 2
        assert assert_consistent(server)["itemCount"] == 1
        assert len(log_entries(storage)) == 1
