"""Processes killed with SIGKILL while the app writes: every write reaches the cloud once
the same command runs again, and until then the store counts it as pending."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from sdk_fixtures import learning_items, make_store
from test_crash import kill, read_until
from test_crash import run_child as child

from sdk import LocalStore, MigrationClient, MigrationOptions, detect_local
from sdk._store import changes
from sdk.contract import Item


def finish(proc: subprocess.Popen[str]) -> list[str]:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return out.splitlines()


def cloud_of(live_server, user: str) -> dict[tuple[str, str], Item]:
    found: dict[tuple[str, str], Item] = {}
    with httpx.Client(
        base_url=f"{live_server.url}/api/migration/{user}/sync",
        headers={"Authorization": f"Bearer {live_server.token(user)}"},
    ) as api:
        since = None
        while True:
            page = api.get(
                "/changes", params={"limit": 5000, **({"since": since} if since else {})}
            ).json()
            for item in page["changes"]:
                item.pop("seq")
                found[(item["collection"], item["key"])] = item
            since = page["cursor"]
            if not page["hasMore"]:
                return found


def app_writes(store: Path, round_: str) -> dict[tuple[str, str], Item]:
    """What the app does while the SDK works: new items, edits of migrated ones, deletes."""
    with LocalStore(store) as app:
        written = [
            app.put("lesson_progress", f"{round_}-new-{i}", {"round": round_, "i": i})
            for i in range(15)
        ]
        written.append(app.put("lesson_progress", "item-000003", {"edited": round_}))
        app.delete("flashcards", "item-000001")
        written.append(app.get("flashcards", "item-000001"))  # type: ignore[arg-type]
    return {(w["collection"], w["key"]): w for w in written}


KILL_POINTS = [
    "batch.sent=kill@3",
    "complete.after=kill@1",
    "cleanup.before=kill@1",
    "sync.push.journaled=kill@1",
    "sync.push.answered=kill@1",
    "sync.pull.answered=kill@1",
    "sync.pull.applied=kill@1",
]
#: On the aws backend (the API and a worker on moto) in ``make test``: a push answered
#: but not journaled, the sync's own exactly-once case.
AWS_KILL_POINTS = ["sync.push.answered=kill@1"]


@pytest.mark.parametrize(
    ("backend", "kill_at"),
    [pytest.param("sqlite", k, id=k) for k in KILL_POINTS]
    + [pytest.param("aws", k, id=f"aws-{k}") for k in AWS_KILL_POINTS],
)
def test_writes_made_while_a_killed_migration_runs_all_reach_the_cloud(
    request, tmp_path, backend, kill_at
):
    live_server = request.getfixturevalue(
        "live_server" if backend == "sqlite" else "aws_live_server"
    )
    user = f"sk-{uuid.uuid4().hex[:10]}"
    store = make_store(tmp_path / "store.sqlite3", learning_items(120))
    live_server.seed(
        user,
        [
            {
                "collection": "notes",
                "key": f"other-{i}",
                "data": {"i": i},
                "updatedAt": 5,
                "deleted": False,
            }
            for i in range(5)
        ],
    )
    # Paused right after the snapshot: the app writes, then the migration goes on and is
    # killed at the failpoint.
    proc = child(
        live_server,
        user,
        store,
        tmp_path / "cache",
        "uploading",
        OFFLINE_MIGRATE_FAILPOINTS=kill_at,
    )
    read_until(proc, "paused")
    written = app_writes(store, "during")
    assert proc.stdin is not None
    proc.stdin.close()  # resumes the child
    proc.wait(timeout=120)
    assert proc.returncode == -9, f"{kill_at} was never reached"
    kill(proc)

    # Until they are in the cloud, the store counts them as pending.
    cloud = cloud_of(live_server, user)
    with LocalStore(store) as s, s._reading("pending") as conn:
        through = changes.settled(conn)  # what a migration marked as in the cloud
        pending = {
            (c, k)
            for c, k in conn.execute(
                "SELECT collection, key FROM items WHERE pending > ?", (through,)
            )
        }
    for key, item in written.items():
        assert key in pending or cloud.get(key, {}).get("data") == item["data"], key
    found = detect_local(store)
    assert found.pending_changes == len(pending) or found.state.value == "ready"

    written |= app_writes(store, "after")  # the app goes on while nothing runs
    lines = finish(child(live_server, user, store, tmp_path / "cache"))
    assert json.loads(lines[-1].split(" ", 1)[1])["verified"] is True

    cloud = cloud_of(live_server, user)
    for key, item in written.items():
        assert cloud[key]["data"] == item["data"] and cloud[key]["deleted"] == item["deleted"]
    with LocalStore(store) as s:
        mine = {(i["collection"], i["key"]): i for i in s.iter_items()}
    assert mine == cloud  # the other device's notes came down too
    assert detect_local(store).pending_changes == 0


def test_a_new_device_bootstrapping_100k_items_killed_midway_resumes_and_verifies(
    live_server, tmp_path
):
    user = f"boot-{uuid.uuid4().hex[:10]}"
    phone = make_store(tmp_path / "phone.sqlite3", learning_items(100_000))
    with MigrationClient(
        server=live_server.url,
        user_id=user,
        token=live_server.token(user),
        store_path=phone,
        options=MigrationOptions(batch_size=5000, cache_dir=tmp_path / "c"),
    ) as client:
        assert client.migrate().verified
    tablet = tmp_path / "tablet" / "store.sqlite3"

    # Frozen after 10 of the pull's 21 pages, then killed there.
    proc = child(
        live_server, user, tablet, tmp_path / "cache", "pulling", "10", MIGRATE_CHILD_SYNC="1"
    )
    read_until(proc, "paused")
    kill(proc)
    with LocalStore(tablet) as s:
        half = s.count(include_deleted=True)
    assert 0 < half < 100_002

    lines = finish(child(live_server, user, tablet, tmp_path / "cache", MIGRATE_CHILD_SYNC="1"))
    answer = json.loads(lines[-1].split(" ", 1)[1])
    assert answer["verified"] is True
    assert answer["pulled"] == 100_002 - half  # resumed from its cursor: nothing twice
    with LocalStore(tablet) as mine, LocalStore(phone) as theirs:
        assert mine.count(include_deleted=True) == 100_002
        assert list(mine.iter_items()) == list(theirs.iter_items())
