"""Conflict policies: the strategies as pure decisions, then end to end against the real
server (per-collection policies, manual resolution across a restart, re-decisions)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import InProcessServer
from fastapi.testclient import TestClient

from backend_stub import Settings, create_app, seed_cloud_items
from backend_stub.storage import iter_conflicts
from sdk import (
    ConfigurationError,
    Conflict,
    ConflictPolicy,
    DataConflictDetected,
    LocalStore,
    MigrationClient,
    MigrationCompleted,
    MigrationError,
    MigrationOptions,
    MigrationOutcome,
    RetryPolicy,
)
from sdk._conflicts.policy import ClockEstimate, decide
from sdk.contract import Item, SessionStatus

T0 = 1_700_000_000_000
MINUTE = 60_000
NOW = T0 + 60 * MINUTE


def item(collection: str, key: str, data: dict[str, Any], at: int, deleted: bool = False) -> Item:
    return Item(collection=collection, key=key, data=data, updatedAt=at, deleted=deleted)


def conflict(local: Item, server: Item) -> Conflict:
    return Conflict(
        conflict_id="c1",
        collection=local["collection"],
        key=local["key"],
        local=local,
        server=server,
        server_version=4,
        server_device_id="tablet",
    )


def decided(policy: ConflictPolicy, c: Conflict, clock: ClockEstimate | None = None):
    return decide(c, policy, clock or ClockEstimate(), now_ms=NOW)


# --------------------------------------------------------------------------- decisions


LIVE = item("prefs", "theme", {"v": "dark"}, T0 + 2 * MINUTE)
CLOUD = item("prefs", "theme", {"v": "light"}, T0 + MINUTE)
TOMBSTONE = item("prefs", "theme", {}, T0 + 3 * MINUTE, deleted=True)


@pytest.mark.parametrize(
    ("strategy", "local", "server", "choice"),
    [
        pytest.param("server_wins", LIVE, CLOUD, "server", id="server wins"),
        pytest.param("local_wins", LIVE, CLOUD, "local", id="local wins"),
        pytest.param("local_wins", TOMBSTONE, CLOUD, "local", id="a local tombstone wins"),
        pytest.param("server_wins", LIVE, TOMBSTONE, "server", id="a cloud tombstone wins"),
        pytest.param("newest_wins", LIVE, CLOUD, "local", id="newest: the device's"),
        pytest.param("newest_wins", CLOUD, LIVE, "server", id="newest: the cloud's"),
        pytest.param("field_merge", TOMBSTONE, CLOUD, "local", id="merge: a newer tombstone"),
        pytest.param("field_merge", CLOUD, TOMBSTONE, "server", id="merge: an older live item"),
    ],
)
def test_a_strategy_picks_the_side_it_promises_and_its_item_verbatim(
    strategy, local, server, choice
):
    decision = decided(ConflictPolicy(default=strategy), conflict(local, server))

    assert decision.choice == choice
    assert decision.item == (local if choice == "local" else server)
    assert decision.kind == strategy
    assert decision.flag is None


def test_newest_wins_corrects_the_device_clock_by_the_measured_offset():
    # The device runs 10 minutes fast: its "2 minutes after" is really 8 minutes before.
    fast = ClockEstimate(offset_ms=10 * MINUTE, uncertainty_ms=20)
    local = item("prefs", "theme", {"v": "dark"}, T0 + 2 * MINUTE)
    server = item("prefs", "theme", {"v": "light"}, T0)

    naive = decided(ConflictPolicy(default="newest_wins"), conflict(local, server))
    corrected = decided(ConflictPolicy(default="newest_wins"), conflict(local, server), fast)

    assert (naive.choice, corrected.choice) == ("local", "server")


@pytest.mark.parametrize(
    ("fallback", "choice", "kind"),
    [
        pytest.param("server_wins", "server", "newest_wins_fallback", id="server"),
        pytest.param("local_wins", "local", "newest_wins_fallback", id="local"),
        pytest.param("manual", "pending", "manual", id="manual"),
        pytest.param(lambda c: {"v": "both"}, "merged", "newest_wins_fallback", id="callable"),
    ],
)
def test_timestamps_within_the_clock_uncertainty_are_flagged_and_left_to_the_fallback(
    fallback, choice, kind
):
    policy = ConflictPolicy(default="newest_wins", fallback=fallback, skew_tolerance_ms=1_000)
    clock = ClockEstimate(offset_ms=0, uncertainty_ms=400)
    local = item("prefs", "theme", {"v": "dark"}, T0 + 1_400)  # 1.4 s apart: within 1.4 s
    server = item("prefs", "theme", {"v": "light"}, T0)

    decision = decided(policy, conflict(local, server), clock)

    assert (decision.choice, decision.kind) == (choice, kind)
    assert decision.flag is not None
    assert decision.flag.reason == "too_close"
    assert decision.flag.resolved_by == (fallback if isinstance(fallback, str) else "callback")
    assert decided(policy, conflict(dict(local, updatedAt=T0 + 1_401), server), clock).flag is None


@pytest.mark.parametrize(
    ("local_at", "server_at", "reason"),
    [
        pytest.param(NOW + 2 * MINUTE, T0, "local_in_future", id="device item in the future"),
        pytest.param(T0, NOW + 2 * MINUTE, "server_in_future", id="cloud item in the future"),
    ],
)
def test_items_stamped_in_the_future_are_flagged_never_trusted(local_at, server_at, reason):
    local = item("prefs", "theme", {"v": "dark"}, local_at)
    server = item("prefs", "theme", {"v": "light"}, server_at)

    decision = decided(ConflictPolicy(default="newest_wins"), conflict(local, server))

    assert decision.flag is not None and decision.flag.reason == reason
    assert decision.choice == "server"  # the default fallback, not the later timestamp


def test_field_merge_keeps_best_scores_and_streaks_every_completed_lesson_and_newest_scalars():
    local = item(
        "progress",
        "unit-1",
        {"score": 70, "streak": 9, "completed": ["l1", "l2"], "level": "b1", "only_here": 1},
        T0 + 5 * MINUTE,
    )
    server = item(
        "progress",
        "unit-1",
        {"score": 85, "streak": 4, "completed": ["l2", "l3"], "level": "a2", "theirs": True},
        T0,
    )

    decision = decided(ConflictPolicy(default="field_merge"), conflict(local, server))

    assert decision.choice == "merged"
    assert decision.item == item(
        "progress",
        "unit-1",
        {
            "score": 85,
            "streak": 9,
            "completed": ["l2", "l3", "l1"],
            "level": "b1",
            "only_here": 1,
            "theirs": True,
        },
        T0 + 5 * MINUTE,
    )


def test_field_merge_rules_are_set_per_collection_and_take_the_integrators_functions():
    policy = ConflictPolicy(
        per_collection={"progress": "field_merge", "stats": "field_merge"},
        merge_rules={
            "progress": {"score": "min", "notes": lambda mine, theirs: f"{theirs}\n{mine}"},
        },
    )
    local = item("progress", "u", {"score": 70, "notes": "mine"}, T0)
    server = item("progress", "u", {"score": 85, "notes": "theirs"}, T0 + MINUTE)

    progress = decided(policy, conflict(local, server))
    stats = decided(
        policy, conflict(dict(local, collection="stats"), dict(server, collection="stats"))
    )

    assert progress.item is not None and progress.item["data"] == {
        "score": 70,
        "notes": "theirs\nmine",
    }
    assert stats.item is not None and stats.item["data"] == {"score": 85, "notes": "theirs"}


def test_a_merge_equal_to_one_side_is_recorded_as_that_side():
    local = item("progress", "u", {"score": 90}, T0 + MINUTE)
    server = item("progress", "u", {"score": 80}, T0)

    decision = decided(ConflictPolicy(default="field_merge"), conflict(local, server))

    assert (decision.choice, decision.item) == ("local", local)


@pytest.mark.parametrize(
    ("answer", "choice", "data"),
    [
        pytest.param("local", "local", {"v": "dark"}, id="local"),
        pytest.param("server", "server", {"v": "light"}, id="server"),
        pytest.param({"v": "dusk"}, "merged", {"v": "dusk"}, id="merged"),
        pytest.param("defer", "pending", None, id="defer"),
    ],
)
def test_a_callback_sees_both_versions_and_keeps_one_merges_or_defers(answer, choice, data):
    seen: list[Conflict] = []

    def callback(c: Conflict):
        seen.append(c)
        return answer

    c = conflict(LIVE, CLOUD)
    decision = decided(ConflictPolicy(per_collection={"prefs": callback}), c)

    assert seen == [c]
    assert decision.choice == choice
    assert (decision.item["data"] if decision.item else None) == data
    assert decision.kind == ("manual" if choice == "pending" else "callback")


@pytest.mark.parametrize(
    ("callback", "error", "match"),
    [
        pytest.param(lambda c: "mine", ConfigurationError, "returned 'mine'", id="nonsense"),
        pytest.param(
            lambda c: {"v": float("nan")}, ConfigurationError, "not a valid item", id="nan"
        ),
        pytest.param(lambda c: 1 / 0, MigrationError, "ZeroDivisionError", id="raises"),
    ],
)
def test_a_broken_callback_stops_with_an_error_that_names_the_item(callback, error, match):
    with pytest.raises(error, match=match) as caught:
        decided(ConflictPolicy(default=callback), conflict(LIVE, CLOUD))
    assert "'prefs'/'theme'" in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        pytest.param({"default": "coin_toss"}, "default must be one of", id="unknown strategy"),
        pytest.param(
            {"per_collection": {"a": "latest"}}, r"per_collection\['a'\]", id="per collection"
        ),
        pytest.param({"fallback": "newest_wins"}, "fallback must be one of", id="looping fallback"),
        pytest.param({"fallback": "field_merge"}, "fallback must be one of", id="merge fallback"),
        pytest.param({"merge_rules": {"a": {"x": "avg"}}}, "merge_rules", id="unknown rule"),
        pytest.param({"skew_tolerance_ms": -1}, "skew_tolerance_ms", id="negative tolerance"),
    ],
)
def test_a_policy_refuses_what_it_cannot_do(settings, match):
    with pytest.raises(ConfigurationError, match=match):
        ConflictPolicy(**settings)


def test_a_policy_cannot_be_changed_after_it_is_made():
    rules = {"progress": "field_merge"}
    policy = ConflictPolicy(per_collection=rules)
    rules["progress"] = "local_wins"

    assert policy.strategy_for("progress") == "field_merge"
    with pytest.raises(TypeError):
        policy.per_collection["x"] = "manual"  # type: ignore[index]


# --------------------------------------------------------------------------- end to end


def client_for(server, store: Path, user: str, tmp_path: Path, policy: ConflictPolicy, **kw):
    return MigrationClient(
        http_client=server.client,
        user_id=user,
        token=server.token(user),
        store_path=store,
        options=MigrationOptions(batch_size=2, cache_dir=tmp_path / "cache", conflicts=policy),
        retry=RetryPolicy.none(),
        **kw,
    )


def local_of(store: Path) -> dict[tuple[str, str], Item]:
    with LocalStore(store, create=False) as s:
        return {(i["collection"], i["key"]): i for i in s.iter_items()}


def cloud_of(server, user: str, keys) -> dict[tuple[str, str], Item]:
    return {k: v.wire() for k, v in server.storage.cloud_items(user, list(keys)).items()}


def seed(server, user: str, items: list[Item]) -> None:
    seed_cloud_items(server.storage, user, items, device_id="tablet", now=T0)


def learner_store(tmp_path: Path) -> Path:
    store = tmp_path / "store.sqlite3"
    with LocalStore(store) as s:
        s.put_many(
            [
                item("preferences", "theme", {"v": "dark"}, T0),
                item("progress", "unit-1", {"score": 70, "completed": ["l1"]}, T0 + MINUTE),
                item("progress", "unit-2", {"score": 10}, T0),
                item("cards", "c1", {"front": "hola"}, T0),
                item("cards", "c2", {"front": "adiós"}, T0),
            ]
        )
    return store


LEARNER_CLOUD = [
    item("preferences", "theme", {"v": "light"}, T0 + 2 * MINUTE),
    item("progress", "unit-1", {"score": 90, "completed": ["l2"]}, T0),
    item("cards", "c1", {"front": "hello"}, T0),
    item("cards", "c2", {"front": "bye"}, T0),
]


def test_each_collection_follows_its_own_strategy_and_both_sides_end_equal(server, tmp_path):
    store = learner_store(tmp_path)
    seed(server, "ana", LEARNER_CLOUD)
    policy = ConflictPolicy(per_collection={"preferences": "local_wins", "progress": "field_merge"})

    with client_for(server, store, "ana", tmp_path, policy) as client:
        result = client.migrate()

    assert result.outcome is MigrationOutcome.COMPLETED and result.verified
    assert result.resolutions_by_kind == {"local_wins": 1, "field_merge": 1, "server_wins": 2}
    local = local_of(store)
    assert cloud_of(server, "ana", local) == local
    assert local[("preferences", "theme")]["data"] == {"v": "dark"}
    assert local[("progress", "unit-1")]["data"] == {"score": 90, "completed": ["l2", "l1"]}
    assert local[("cards", "c1")]["data"] == {"front": "hello"}


def test_manual_conflicts_wait_for_the_app_and_nothing_is_confirmed_before(server, tmp_path):
    store = learner_store(tmp_path)
    seed(server, "ben", LEARNER_CLOUD)
    events: list[object] = []
    posts: list[dict[str, Any]] = []

    def record_posts(request) -> None:
        if request.url.path.endswith("/resolve-conflicts"):
            posts.append(json.loads(request.read()))

    server.client.event_hooks["request"].append(record_posts)
    policy = ConflictPolicy(per_collection={"cards": "manual"})
    with client_for(server, store, "ben", tmp_path, policy, on_event=events.append) as client:
        first = client.migrate()
        again = client.migrate()
        pending = client.pending_conflicts()

    assert first.outcome is again.outcome is MigrationOutcome.AWAITING_RESOLUTION
    assert (first.pending_conflicts, first.conflicts, first.verified) == (2, 4, False)
    assert first.resolutions_by_kind == {"server_wins": 2}
    assert [(c.collection, c.key) for c in pending] == [("cards", "c1"), ("cards", "c2")]
    assert pending[0].local["data"] == {"front": "hola"}
    assert (pending[0].server["data"], pending[0].server_version) == ({"front": "hello"}, 1)
    assert pending[0].server_device_id == "tablet" and pending[0].reason
    # The automatic decisions were posted once; the session waits, nothing is committed.
    assert [len(p["resolutions"]) for p in posts] == [2]
    session = server.storage.latest_session("ben")
    assert session is not None and session.status is SessionStatus.AWAITING_RESOLUTION
    assert cloud_of(server, "ben", [("progress", "unit-2")]) == {}
    assert not any(isinstance(e, MigrationCompleted) for e in events)
    assert sum(isinstance(e, DataConflictDetected) for e in events) == 1
    # The server announced the conflicts once, though they came in two batches, and
    # counts them in the status.
    assert len(server.storage.events(user_id="ben", type="DataConflictDetected")) == 1
    status = server.client.get(
        "/api/migration/ben/status", headers={"Authorization": f"Bearer {server.token('ben')}"}
    ).json()
    assert (status["conflictCount"], status["unresolvedConflicts"]) == (4, 2)


def test_the_apps_decisions_survive_a_restart_and_the_next_migration_applies_them(server, tmp_path):
    store = learner_store(tmp_path)
    seed(server, "cy", LEARNER_CLOUD)
    policy = ConflictPolicy(per_collection={"cards": "manual", "preferences": "manual"})
    with client_for(server, store, "cy", tmp_path, policy) as client:
        assert client.migrate().pending_conflicts == 3

    # Another process, offline (nothing listens on that port), decides from the journal.
    script = """
import sys
from sdk import MigrationClient
with MigrationClient(server="http://127.0.0.1:9", user_id="cy", token="t",
                     store_path=sys.argv[1]) as client:
    for c in client.pending_conflicts():
        if c.key == "c1":
            client.resolve_conflict(c.conflict_id, "server")
        elif c.key == "c2":
            client.resolve_conflict(c.conflict_id, "merged", {"front": "adiós / bye"})
        else:
            client.resolve_conflict(c.conflict_id, "local")
    print(len(client.pending_conflicts()))
"""
    done = subprocess.run(
        [sys.executable, "-c", script, str(store)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"

    with client_for(server, store, "cy", tmp_path, policy) as client:
        result = client.migrate()

    assert result.outcome is MigrationOutcome.COMPLETED and result.verified
    assert result.resolutions_by_kind == {"manual": 3, "server_wins": 1}
    local = local_of(store)
    assert cloud_of(server, "cy", local) == local
    assert local[("cards", "c1")]["data"] == {"front": "hello"}
    assert local[("cards", "c2")]["data"] == {"front": "adiós / bye"}
    assert local[("cards", "c2")]["updatedAt"] == T0
    assert local[("preferences", "theme")]["data"] == {"v": "dark"}


@pytest.fixture
def clocked(tmp_path):
    """The real app in-process, on a clock the test moves: ``(server, advance)``."""
    offset = [0]
    settings = Settings(data_dir=tmp_path / "clocked")
    app = create_app(settings, clock=lambda: int(time.time() * 1000) + offset[0])
    with TestClient(app, base_url="http://testserver") as client:

        def advance_past_the_session_ttl() -> None:
            offset[0] += settings.limits.session_ttl_seconds * 1000 + MINUTE

        yield InProcessServer(settings, client), advance_past_the_session_ttl


def test_the_users_decisions_outlive_a_session_that_expired_while_they_decided(clocked, tmp_path):
    server, expire = clocked
    store = learner_store(tmp_path)
    seed(server, "eve", LEARNER_CLOUD)
    policy = ConflictPolicy(per_collection={"cards": "manual", "preferences": "manual"})
    with client_for(server, store, "eve", tmp_path, policy) as client:
        assert client.migrate().pending_conflicts == 3
        first = {c.key: c.conflict_id for c in client.pending_conflicts()}
        # Two decisions today, applied and posted by the next run; the third waits.
        client.resolve_conflict(first["c1"], "server")
        client.resolve_conflict(first["theme"], "local")
        assert client.migrate().pending_conflicts == 1
        # The user takes days over the last one: the server's session expires meanwhile.
        expire()
        (last,) = client.pending_conflicts()
        client.resolve_conflict(last.conflict_id, "merged", {"front": "adiós / bye"})
        before = server.storage.latest_session("eve")

        result = client.migrate()  # starts over on a new session, asks nothing again

    assert result.outcome is MigrationOutcome.COMPLETED and result.verified
    after = server.storage.latest_session("eve")
    assert before is not None and after is not None and after.id != before.id
    assert result.pending_conflicts == 0
    # c1 and the progress item (server_wins) were written locally before the restart, so
    # they no longer conflict; the user's other two decisions were applied to the same
    # conflicts, listed again by the new session.
    assert result.resolutions_by_kind == {"manual": 2}
    local = local_of(store)
    assert cloud_of(server, "eve", local) == local
    assert local[("cards", "c1")]["data"] == {"front": "hello"}
    assert local[("cards", "c2")]["data"] == {"front": "adiós / bye"}
    assert local[("preferences", "theme")]["data"] == {"v": "dark"}


def test_a_carried_decision_is_not_applied_to_a_conflict_that_changed(clocked, tmp_path):
    server, expire = clocked
    store = learner_store(tmp_path)
    seed(server, "fay", LEARNER_CLOUD)
    policy = ConflictPolicy(per_collection={"cards": "manual"})
    with client_for(server, store, "fay", tmp_path, policy) as client:
        client.migrate()
        for conflict in client.pending_conflicts():
            client.resolve_conflict(conflict.conflict_id, "local")
        expire()
        # Meanwhile another device changed c2 in the cloud: the user never saw this one.
        seed(server, "fay", [item("cards", "c2", {"front": "so long"}, T0 + MINUTE)])

        result = client.migrate()
        (asked,) = client.pending_conflicts()

    assert result.outcome is MigrationOutcome.AWAITING_RESOLUTION
    assert (asked.key, asked.server["data"]) == ("c2", {"front": "so long"})


def test_a_decision_can_be_changed_until_it_is_applied_and_bad_ones_are_refused(server, tmp_path):
    store = learner_store(tmp_path)
    seed(server, "dee", LEARNER_CLOUD)
    policy = ConflictPolicy(default="manual")
    with client_for(server, store, "dee", tmp_path, policy) as client:
        client.migrate()
        theme = next(c for c in client.pending_conflicts() if c.key == "theme")
        with pytest.raises(ConfigurationError, match="no conflict 'nope'"):
            client.resolve_conflict("nope", "local")
        with pytest.raises(ConfigurationError, match="choice must be"):
            client.resolve_conflict(theme.conflict_id, "mine")
        with pytest.raises(ConfigurationError, match="needs data"):
            client.resolve_conflict(theme.conflict_id, "merged")
        with pytest.raises(ConfigurationError, match="only for choice='merged'"):
            client.resolve_conflict(theme.conflict_id, "local", {"v": 1})
        client.resolve_conflict(theme.conflict_id, "local")
        client.resolve_conflict(theme.conflict_id, "server")  # the later decision counts
        result = client.migrate()
        assert result.pending_conflicts == 3
        with pytest.raises(ConfigurationError, match="no conflict"):
            client.resolve_conflict(theme.conflict_id, "local")  # applied: final

    assert local_of(store)[("preferences", "theme")]["data"] == {"v": "light"}


def test_a_deferring_callback_is_asked_again_on_the_next_run(server, tmp_path):
    store = learner_store(tmp_path)
    seed(server, "eve", LEARNER_CLOUD)
    online = {"ready": False}

    def ask_later(c: Conflict):
        return "local" if online["ready"] else "defer"

    policy = ConflictPolicy(per_collection={"cards": ask_later})
    with client_for(server, store, "eve", tmp_path, policy) as client:
        assert client.migrate().pending_conflicts == 2
        online["ready"] = True
        result = client.migrate()

    assert result.outcome is MigrationOutcome.COMPLETED
    assert result.resolutions_by_kind == {"callback": 2, "server_wins": 2}
    assert local_of(store)[("cards", "c1")]["data"] == {"front": "hola"}
    assert cloud_of(server, "eve", [("cards", "c1")])[("cards", "c1")]["data"] == {"front": "hola"}


def test_a_conflict_the_cloud_changes_after_its_decision_is_decided_again(server, tmp_path):
    store = learner_store(tmp_path)
    seed(server, "fin", LEARNER_CLOUD)
    policy = ConflictPolicy(per_collection={"preferences": "manual"})
    with client_for(server, store, "fin", tmp_path, policy) as client:
        assert client.migrate().pending_conflicts == 1
        assert local_of(store)[("cards", "c1")]["data"] == {"front": "hello"}  # applied
        # Another device writes c1 again while this one waits for the user.
        seed(server, "fin", [item("cards", "c1", {"front": "hi"}, T0 + 5 * MINUTE)])
        (theme,) = client.pending_conflicts()
        client.resolve_conflict(theme.conflict_id, "local")
        result = client.migrate()

    assert result.outcome is MigrationOutcome.COMPLETED and result.verified
    local = local_of(store)
    assert local[("cards", "c1")]["data"] == {"front": "hi"}
    assert cloud_of(server, "fin", local) == local
    session = server.storage.latest_session("fin")
    assert session is not None
    c1 = next(c for c in iter_conflicts(server.storage, session.id) if c.key == "c1")
    assert (c1.resolved, c1.choice, c1.server.version) == (True, "server", 2)
