"""Progress as an app sees it: one overall fraction across every phase of a call, never
going backwards, and every phase reporting its own end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sdk_fixtures import learning_items, make_store

from backend_stub import seed_cloud_items
from sdk import (
    MigrationClient,
    MigrationOptions,
    MigrationOutcome,
    Progress,
    RetryPolicy,
    _failpoints,
)
from sdk._events import Hooks, ProgressPhase


@pytest.fixture(autouse=True)
def _failpoints_off() -> Iterator[None]:
    _failpoints.reset()
    yield
    _failpoints.reset()


def client_for(server, store: Path, user: str, tmp_path: Path, seen: list[Progress]):
    return MigrationClient(
        http_client=server.client,
        user_id=user,
        token=server.token(user),
        store_path=store,
        options=MigrationOptions(batch_size=40, cache_dir=tmp_path / "cache"),
        retry=RetryPolicy.none(),
        on_progress=seen.append,
    )


def a_store_with_a_cloud_that_differs(server, tmp_path: Path, user: str) -> Path:
    """A store of 200 items, and a cloud that holds some of them (some different) and
    items the device lacks: the migration resolves conflicts, the sync pulls."""
    items = learning_items(200)
    store = make_store(tmp_path / "store.sqlite3", items)
    different = [dict(i, data={"score": 100}) for i in items[10:20]]
    cloud_only = [
        dict(i, collection="lesson_progress", key=f"other-{n}")
        for n, i in enumerate(learning_items(7))
    ]
    seed_cloud_items(server.storage, user, items[:10] + different + cloud_only, device_id="tab")
    return store


def overalls(seen: list[Progress]) -> list[float]:
    return [p.overall for p in seen]


def last_of_each_phase(seen: list[Progress]) -> dict[ProgressPhase, Progress]:
    return {p.phase: p for p in seen}


def test_the_overall_fraction_never_goes_backwards_across_a_migration_and_its_sync(
    server, tmp_path
):
    store = a_store_with_a_cloud_that_differs(server, tmp_path, "alice")
    seen: list[Progress] = []

    with client_for(server, store, "alice", tmp_path, seen) as client:
        result = client.migrate()

    assert result.outcome is MigrationOutcome.COMPLETED and result.sync is not None
    assert result.conflicts == 10 and result.sync.pulled > 0
    assert overalls(seen) == sorted(overalls(seen))
    assert seen[-1].phase is ProgressPhase.DONE and seen[-1].overall == 1.0
    # Only the call's end reports DONE (the migration's own end is its sync's start).
    assert [p.phase for p in seen].count(ProgressPhase.DONE) == 1
    # Every phase passes through several values, and each ends at its total.
    phases = last_of_each_phase(seen)
    assert {
        ProgressPhase.SNAPSHOTTING,
        ProgressPhase.STARTING,
        ProgressPhase.UPLOADING,
        ProgressPhase.RESOLVING,
        ProgressPhase.COMPLETING,
        ProgressPhase.VERIFYING,
        ProgressPhase.PULLING,
    } <= set(phases)
    assert all(p.items_done == p.items_total for p in phases.values()), phases
    assert len(set(overalls(seen))) >= 10


@pytest.mark.parametrize(
    "failpoint",
    [
        pytest.param("snapshot.taken", id="snapshotted"),
        pytest.param("batch.answered", id="mid-upload"),
        pytest.param("resolve.before", id="resolving"),
        pytest.param("complete.after", id="completed"),
        pytest.param("cleanup.before", id="verified"),
        pytest.param("sync.pull.applied", id="in-the-closing-sync"),
    ],
)
def test_after_a_kill_the_resumed_migration_reports_a_monotonic_fraction_up_to_one(
    server, tmp_path, failpoint
):
    store = a_store_with_a_cloud_that_differs(server, tmp_path, "bob")
    first: list[Progress] = []
    _failpoints.enable(failpoint, "raise", at=2 if failpoint == "batch.answered" else 1)
    with (
        pytest.raises(_failpoints.FailpointError),
        client_for(server, store, "bob", tmp_path, first) as client,
    ):
        client.migrate()
    _failpoints.reset()
    # A new process: a new client, its own bar.
    second: list[Progress] = []

    with client_for(server, store, "bob", tmp_path, second) as client:
        result = client.migrate()

    assert result.verified
    assert first and overalls(first) == sorted(overalls(first)) and first[-1].overall < 1.0
    assert overalls(second) == sorted(overalls(second))
    assert second[-1].phase is ProgressPhase.DONE and second[-1].overall == 1.0
    assert all(p.items_done == p.items_total for p in last_of_each_phase(second).values())


def test_a_call_that_resumes_in_the_same_process_continues_the_bar_where_it_stood(server, tmp_path):
    store = a_store_with_a_cloud_that_differs(server, tmp_path, "carol")
    seen: list[Progress] = []
    _failpoints.enable("complete.before", "raise")
    with client_for(server, store, "carol", tmp_path, seen) as client:
        with pytest.raises(_failpoints.FailpointError):
            client.migrate()
        stood = seen[-1].overall
        _failpoints.reset()
        client.migrate()
        after = len(seen)
        client.sync()  # a new call after DONE: a new bar

    assert stood > 0.7
    assert overalls(seen[:after]) == sorted(overalls(seen[:after]))
    assert seen[after - 1].overall == 1.0
    sync_only = seen[after:]
    # Nothing to push, nothing new to pull (0/0 is a finished pull): a fresh bar that
    # starts below the last call's end.
    assert sync_only[0].overall < 1.0 and sync_only[-1].overall == 1.0
    assert overalls(sync_only) == sorted(overalls(sync_only))


def test_a_sync_that_migrates_nothing_spans_the_whole_bar_with_its_own_phases():
    seen: list[Progress] = []
    hooks = Hooks(on_progress=seen.append)
    hooks.progress(Progress(ProgressPhase.PULLING, 0, 2000))
    hooks.progress(Progress(ProgressPhase.PULLING, 1000, 3000))
    hooks.progress(Progress(ProgressPhase.PULLING, 1000, 1000))
    hooks.progress(Progress(ProgressPhase.DONE, 1000, 1000))
    hooks.progress(Progress(ProgressPhase.PUSHING, 0, 10))  # the next call

    assert overalls(seen) == [0.3, 0.53, 0.99, 1.0, 0.0]
