"""The startup hook: one call at app start, the migration in a background thread."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from pathlib import Path

import httpx
import pytest
from sdk_fixtures import learning_items, make_store

import sdk
from backend_stub import issue_token, seed_cloud_items
from sdk import (
    AutoMigration,
    AutoState,
    AutoStatus,
    ConfigurationError,
    Conflict,
    ConflictPolicy,
    ForeignStoreError,
    LocalState,
    LocalStore,
    MigrationClient,
    MigrationCompleted,
    MigrationOptions,
    MigrationOutcome,
    Progress,
    ProgressPhase,
    RetryPolicy,
    auto_migrate,
    detect_local,
)
from sdk._auto import journal_progress
from sdk._migration.journal import Journal, Phase, journal_path_for

FAST = RetryPolicy(attempts=1_000_000, timeout=float("inf"), initial=0.01, max_delay=0.02, jitter=0)
DEADLINE = 30.0


class Recorder:
    """Collects what the hook reports; ``reached`` waits for a condition without sleeping."""

    def __init__(self) -> None:
        self.states: list[AutoStatus] = []
        self.progress: list[Progress] = []
        self.events: list[object] = []
        self.done: list[object] = []
        self.failures: list[Exception] = []
        self.threads: set[int] = set()
        self._cond = threading.Condition()

    def _add(self, bucket: list, value: object) -> None:  # type: ignore[type-arg]
        with self._cond:
            bucket.append(value)
            self.threads.add(threading.get_ident())
            self._cond.notify_all()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_state": lambda s: self._add(self.states, s),
            "on_progress": lambda p: self._add(self.progress, p),
            "on_event": lambda e: self._add(self.events, e),
            "on_done": lambda r: self._add(self.done, r),
            "on_failure": lambda e: self._add(self.failures, e),
        }

    def reached(self, condition, timeout: float = DEADLINE) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            assert self._cond.wait_for(condition, timeout), "condition not reached in time"

    def state_names(self) -> list[str]:
        return [s.state.value for s in self.states]


def start_hook(server, store: Path, user: str | None, tmp_path: Path, recorder=None, **kw):
    recorder = recorder or Recorder()
    kw.setdefault("options", MigrationOptions(batch_size=25, cache_dir=tmp_path / "cache"))
    kw.setdefault("retry", RetryPolicy.none())
    kw.setdefault("backoff", FAST)
    handle = auto_migrate(
        http_client=server.client,
        user_id=user,
        token=server.token(user) if user else None,
        store_path=store,
        **recorder.callbacks(),
        **kw,
    )
    return handle, recorder


def count_requests(server) -> list[str]:
    seen: list[str] = []
    server.client.event_hooks["request"].append(lambda r: seen.append(r.url.path))
    return seen


def test_the_hook_returns_at_once_and_migrates_in_the_background(server, tmp_path):
    items = learning_items(200)
    store = make_store(tmp_path / "store.sqlite3", items)

    handle, rec = start_hook(server, store, "ann", tmp_path)

    assert isinstance(handle, AutoMigration)
    assert handle.wait(DEADLINE) is AutoState.DONE
    assert handle.stop() is True
    assert len(rec.done) == 1 and rec.done[0].verified
    assert rec.done[0].item_count == len(items)
    assert handle.result is rec.done[0]
    assert rec.state_names()[:2] == ["checking", "migrating"]
    assert rec.state_names()[-1] == "done"
    uploads = [p.items_done for p in rec.progress if p.phase is ProgressPhase.UPLOADING]
    assert uploads == sorted(uploads) and uploads[-1] == len(items)
    assert any(isinstance(e, MigrationCompleted) for e in rec.events)
    assert threading.get_ident() not in rec.threads  # nothing ran on the caller's thread
    assert detect_local(store).state is LocalState.MIGRATED


@pytest.mark.parametrize(
    "prepare",
    [
        pytest.param(lambda path, server: None, id="no store"),
        pytest.param(lambda path, server: LocalStore(path).close(), id="empty store"),
        pytest.param(
            lambda path, server: MigrationClient(
                http_client=server.client,
                user_id="bea",
                token=server.token("bea"),
                store_path=make_store(path, learning_items(5)),
                options=MigrationOptions(cache_dir=path.parent / "c"),
            ).migrate(),
            id="already migrated",
        ),
    ],
)
def test_without_sync_the_hook_does_nothing_when_there_is_nothing_to_migrate(
    server, tmp_path, prepare
):
    store = tmp_path / "store.sqlite3"
    prepare(store, server)
    requests = count_requests(server)

    handle, rec = start_hook(server, store, "bea", tmp_path, sync=False)

    assert handle.wait(DEADLINE) is AutoState.NOTHING_TO_MIGRATE
    assert requests == []
    assert rec.done == [] and rec.failures == [] and rec.progress == []


def test_a_signed_in_device_without_data_downloads_the_users_cloud_data(server, tmp_path):
    phone = make_store(tmp_path / "phone.sqlite3", learning_items(30))
    with MigrationClient(
        http_client=server.client,
        user_id="bea",
        token=server.token("bea"),
        store_path=phone,
        options=MigrationOptions(cache_dir=tmp_path / "c"),
    ) as client:
        client.migrate()
    store = tmp_path / "new-device" / "store.sqlite3"
    synced: list[object] = []

    handle, rec = start_hook(server, store, "bea", tmp_path, on_sync=synced.append)

    assert handle.wait(DEADLINE) is AutoState.SYNCED
    handle.stop()
    assert synced and synced[-1].verified and synced[-1].pulled == 32
    with LocalStore(store) as mine, LocalStore(phone) as theirs:
        assert list(mine.iter_items()) == list(theirs.iter_items())
    assert rec.failures == []


def test_after_the_migration_the_hook_pushes_soon_after_the_app_writes(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(20))
    synced: list[object] = []
    sync_done = threading.Condition()

    def on_sync(result: object) -> None:
        with sync_done:
            synced.append(result)
            sync_done.notify_all()

    handle, rec = start_hook(
        server, store, "dan", tmp_path, on_sync=on_sync, push_delay=0.01, sync_interval=3600
    )
    assert handle.wait(DEADLINE) is AutoState.DONE
    with LocalStore(store) as app:
        app.put("lesson_progress", "after-done", {"score": 7})
    with sync_done:
        assert sync_done.wait_for(lambda: any(r.pushed for r in synced), DEADLINE)
    handle.stop()
    pushed = next(r for r in synced if r.pushed)
    assert pushed.pushed == 1 and pushed.verified and pushed.pending_changes == 0
    assert server.storage.cloud_items("dan", [("lesson_progress", "after-done")])
    assert "synced" in rec.state_names()


def test_an_anonymous_users_data_waits_and_migrates_as_soon_as_they_register(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(40))
    requests = count_requests(server)

    handle, rec = start_hook(server, store, None, tmp_path)
    assert handle.wait(DEADLINE) is AutoState.ANONYMOUS
    assert not handle.running and requests == []

    handle.user_registered("cleo", lambda: server.token("cleo"))

    assert handle.wait(DEADLINE) is AutoState.DONE
    assert rec.done[0].item_count == 42
    assert server.storage.latest_session("cleo") is not None


def test_offline_at_start_it_retries_with_backoff_and_finishes_once_the_server_is_back(
    server, tmp_path
):
    store = make_store(tmp_path / "store.sqlite3", learning_items(60))
    offline = threading.Event()
    offline.set()

    def network(request: httpx.Request) -> None:
        if offline.is_set():
            raise httpx.ConnectError("network is unreachable", request=request)

    server.client.event_hooks["request"].append(network)
    handle, rec = start_hook(server, store, "dan", tmp_path)

    rec.reached(lambda: rec.state_names().count("retrying") >= 3)
    retrying = [s for s in rec.states if s.state is AutoState.RETRYING]
    assert all(s.retry_in is not None and s.error is not None for s in retrying)
    assert "will try again" in retrying[0].detail and "unreachable" in retrying[0].detail
    assert retrying[0].message == (
        "Your data is safe on this device; waiting for the network to sync it"
    )
    assert rec.failures == []  # offline is not a failure
    offline.clear()

    assert handle.wait(DEADLINE) is AutoState.DONE
    assert rec.done[0].verified


def test_the_next_start_resumes_what_a_failed_attempt_left(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(100))
    puts = {"n": 0}

    def drop_after_two_batches(request: httpx.Request) -> None:
        if request.method == "PUT":
            puts["n"] += 1
            if puts["n"] > 2:
                raise httpx.ConnectError("network is unreachable", request=request)

    server.client.event_hooks["request"].append(drop_after_two_batches)
    options = MigrationOptions(batch_size=25, max_in_flight=1, cache_dir=tmp_path / "cache")
    first, rec = start_hook(server, store, "eve", tmp_path, options=options)
    rec.reached(lambda: "retrying" in rec.state_names())
    assert first.stop(DEADLINE) and first.state is AutoState.STOPPED
    server.client.event_hooks["request"].clear()

    second, rec2 = start_hook(server, store, "eve", tmp_path, options=options)

    assert second.wait(DEADLINE) is AutoState.DONE
    result = rec2.done[0]
    assert result.resumed
    assert result.batches_uploaded == 5 - 2  # 102 items in batches of 25
    assert len(server.storage.events(user_id="eve", type="MigrationStarted")) == 1


def test_stopping_the_app_leaves_at_a_safe_point_in_bounded_time_and_the_next_start_resumes(
    server, tmp_path
):
    items = learning_items(300)
    store = make_store(tmp_path / "store.sqlite3", items)
    reached, go = threading.Event(), threading.Event()

    def pause_mid_upload(p: Progress) -> None:
        if p.phase is ProgressPhase.UPLOADING and p.items_done >= 50 and not reached.is_set():
            reached.set()
            go.wait(DEADLINE)

    options = MigrationOptions(batch_size=25, max_in_flight=1, cache_dir=tmp_path / "cache")
    first = auto_migrate(
        http_client=server.client,
        user_id="fay",
        token=server.token("fay"),
        store_path=store,
        options=options,
        on_progress=pause_mid_upload,
    )
    try:
        assert reached.wait(DEADLINE)
        assert first.stop(timeout=0) is False  # asked to stop; it is inside a callback
    finally:
        go.set()
    assert first.stop(timeout=10) is True
    assert first.state is AutoState.STOPPED
    assert first.result is not None and first.result.outcome is MigrationOutcome.STOPPED

    session = server.storage.latest_session("fay")
    held = len(server.storage.received_batches(session.id))
    assert 0 < held < 13  # 302 items in batches of 25
    with Journal(journal_path_for(store)) as journal:
        record = journal.load()
        assert record is not None and record.phase is Phase.STARTED
    assert detect_local(store).state is LocalState.READY

    second, rec = start_hook(server, store, "fay", tmp_path, options=options)
    assert second.wait(DEADLINE) is AutoState.DONE
    assert rec.done[0].resumed and rec.done[0].session_id == session.id
    assert rec.done[0].batches_uploaded == 13 - held


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("transport", id="inside a request's retry wait"),
        pytest.param("backoff", id="between attempts"),
    ],
)
def test_stop_interrupts_a_long_wait_at_once(server, tmp_path, where):
    store = make_store(tmp_path / "store.sqlite3", learning_items(10))
    tried = threading.Event()

    def unreachable(request: httpx.Request) -> None:
        tried.set()
        raise httpx.ConnectError("network is unreachable", request=request)

    server.client.event_hooks["request"].append(unreachable)
    long = RetryPolicy(attempts=50, timeout=3600, initial=600, max_delay=600, jitter=0)
    if where == "transport":
        handle, rec = start_hook(server, store, "gil", tmp_path, retry=long)
        assert tried.wait(DEADLINE)
    else:
        handle, rec = start_hook(server, store, "gil", tmp_path, backoff=long)
        rec.reached(lambda: "retrying" in rec.state_names())

    assert handle.stop(timeout=10) is True  # not the 600 s wait: stopped at once
    assert handle.state is AutoState.STOPPED


def test_a_second_instance_never_migrates_the_same_store_and_follows_the_firsts_progress(
    server, tmp_path
):
    store = make_store(tmp_path / "store.sqlite3", learning_items(300))
    reached, go = threading.Event(), threading.Event()

    def pause_mid_upload(p: Progress) -> None:
        if p.phase is ProgressPhase.UPLOADING and p.items_done >= 100 and not reached.is_set():
            reached.set()
            go.wait(DEADLINE)

    options = MigrationOptions(batch_size=25, max_in_flight=1, cache_dir=tmp_path / "cache")
    first = auto_migrate(
        http_client=server.client,
        user_id="hal",
        token=server.token("hal"),
        store_path=store,
        options=options,
        on_progress=pause_mid_upload,
    )
    try:
        assert reached.wait(DEADLINE)
        second, rec = start_hook(
            server, store, "hal", tmp_path, options=options, watch_interval=0.01
        )
        rec.reached(lambda: any(p.items_done >= 100 for p in rec.progress))
        assert second.state is AutoState.WATCHING
        watched = rec.progress[-1]
        assert watched.phase is ProgressPhase.UPLOADING and watched.items_total == 302
    finally:
        go.set()

    assert first.wait(DEADLINE) is AutoState.DONE
    assert second.wait(DEADLINE) is AutoState.DONE
    assert rec.done[0].outcome is MigrationOutcome.ALREADY_MIGRATED
    assert len(server.storage.events(user_id="hal", type="MigrationStarted")) == 1
    assert rec.state_names() == ["checking", "watching", "migrating", "done"]


def test_the_token_function_is_asked_again_when_the_token_has_expired(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(20))
    handed: list[str] = []

    def token() -> str:
        # The first token handed out is already expired; the next ones are fresh.
        ttl = -60 if not handed else 600
        handed.append(issue_token("ida", server.settings.jwt_secret, ttl=ttl))
        return handed[-1]

    handle = auto_migrate(
        http_client=server.client,
        user_id="ida",
        token=token,
        store_path=store,
        options=MigrationOptions(cache_dir=tmp_path / "cache"),
        retry=RetryPolicy.none(),
    )

    assert handle.wait(DEADLINE) is AutoState.DONE
    assert len(handed) >= 3


def test_callbacks_reach_the_app_thread_through_dispatch(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(50))
    ui_calls: queue.Queue = queue.Queue()  # type: ignore[type-arg]
    _handle, rec = start_hook(server, store, "jo", tmp_path, dispatch=ui_calls.put)

    deadline = time.monotonic() + DEADLINE
    while not rec.done and time.monotonic() < deadline:  # the app's event loop
        with contextlib.suppress(queue.Empty):
            ui_calls.get(timeout=0.1)()

    assert rec.done and rec.done[0].verified
    assert rec.threads == {threading.get_ident()}
    assert rec.progress and rec.events and rec.states


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"user_id": "not a valid id!"}, ConfigurationError, id="bad user id"),
        pytest.param({"token": None}, ConfigurationError, id="no token"),
        pytest.param({"store_path": None}, ConfigurationError, id="no store given"),
        pytest.param({"store_path": 5}, ConfigurationError, id="a store path that is no path"),
        pytest.param({"foreign": True}, ForeignStoreError, id="another app's database"),
    ],
)
def test_a_misconfiguration_or_unusable_store_is_reported_never_raised(
    server, tmp_path, kwargs, error
):
    store = make_store(tmp_path / "store.sqlite3", learning_items(5))
    if kwargs.pop("foreign", False):
        store = tmp_path / "foreign.sqlite3"
        store.write_bytes(b"SQLite format 3\x00" + bytes(200))
    failures: list[Exception] = []
    args = {
        "http_client": server.client,
        "user_id": "kim",
        "token": server.token("kim"),
        "store_path": store,
        "on_failure": failures.append,
    } | kwargs

    handle = auto_migrate(**args)

    assert handle.wait(DEADLINE) is AutoState.FAILED
    assert [type(f) for f in failures] == [error]
    assert handle.status.error is failures[0]
    assert str(failures[0]) == handle.status.detail
    assert str(failures[0]) not in handle.status.message
    assert type(failures[0]).__name__ not in handle.status.message


def test_a_callback_that_raises_does_not_break_the_migration(server, tmp_path, caplog):
    store = make_store(tmp_path / "store.sqlite3", learning_items(30))

    def broken(_: object) -> None:
        raise RuntimeError("bug in the app's progress bar")

    handle = auto_migrate(
        http_client=server.client,
        user_id="lee",
        token=server.token("lee"),
        store_path=store,
        options=MigrationOptions(cache_dir=tmp_path / "cache"),
        on_progress=broken,
        on_state=broken,
    )

    assert handle.wait(DEADLINE) is AutoState.DONE
    assert "callback raised" in caplog.text


def test_the_journal_tells_any_process_how_far_a_migration_got(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(98))
    seen: list[tuple[Progress, Progress | None]] = []

    def peek(p: Progress) -> None:
        if p.phase is ProgressPhase.UPLOADING and p.items_done == 50:
            seen.append((p, journal_progress(store)))

    assert journal_progress(store) is None
    with MigrationClient(
        http_client=server.client,
        user_id="max",
        token=server.token("max"),
        store_path=store,
        options=MigrationOptions(batch_size=25, max_in_flight=1, cache_dir=tmp_path / "c"),
        on_progress=peek,
    ) as client:
        client.migrate()

    # Another process reading the journal sees what the migrating one reports.
    ((reported, read),) = seen
    assert read == reported
    assert journal_progress(store) is None  # finished: the journal is cleared


def test_a_migration_asked_to_stop_before_it_starts_opens_no_session(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(10))
    stop = threading.Event()
    stop.set()
    with MigrationClient(
        http_client=server.client,
        user_id="ned",
        token=server.token("ned"),
        store_path=store,
        options=MigrationOptions(cache_dir=tmp_path / "c"),
    ) as client:
        result = client.migrate(stop=stop)
    assert result.outcome is MigrationOutcome.STOPPED
    assert server.storage.latest_session("ned") is None
    assert detect_local(store).state is LocalState.READY


def test_conflicts_needing_the_user_reach_the_app_and_survive_a_restart(server, tmp_path):
    items = learning_items(40)
    store = make_store(tmp_path / "store.sqlite3", items)
    theirs = [dict(i, data={"score": 100}) for i in items[:3]]
    seed_cloud_items(server.storage, "ola", theirs, device_id="tablet")
    options = MigrationOptions(
        cache_dir=tmp_path / "cache", conflicts=ConflictPolicy(default="manual")
    )
    asked: list[list[Conflict]] = []

    first, _ = start_hook(
        server, store, "ola", tmp_path, options=options, on_conflicts=asked.append
    )

    assert first.wait(DEADLINE) is AutoState.AWAITING_USER
    ((c1, c2, c3),) = asked
    assert {c.key for c in (c1, c2, c3)} == {i["key"] for i in theirs}
    assert c1.server["data"] == {"score": 100} and c1.local["data"] != {"score": 100}
    assert "choose which to keep" in first.status.detail
    assert first.resolve(c1.conflict_id, "local") == 2
    assert first.stop(DEADLINE) and first.state is AutoState.STOPPED  # the app closes

    asked.clear()
    second, _ = start_hook(
        server, store, "ola", tmp_path, options=options, on_conflicts=asked.append
    )
    assert second.wait(DEADLINE) is AutoState.AWAITING_USER
    assert [c.conflict_id for c in asked[0]] == [c2.conflict_id, c3.conflict_id]
    assert [c.conflict_id for c in second.pending_conflicts()] == [c2.conflict_id, c3.conflict_id]
    assert second.resolve(c2.conflict_id, "server") == 1
    assert second.resolve(c3.conflict_id, "merged", {"score": 7}) == 0  # continues by itself

    assert second.wait(DEADLINE) is AutoState.DONE
    assert second.result is not None and second.result.resolutions_by_kind == {"manual": 3}
    with LocalStore(store, create=False) as s:
        local = {k: s.get(c.collection, c.key) for k, c in (("1", c1), ("2", c2), ("3", c3))}
    assert local["1"]["data"] == c1.local["data"]
    assert local["2"]["data"] == {"score": 100}
    assert local["3"]["data"] == {"score": 7}
    cloud = server.storage.cloud_items("ola", [(c.collection, c.key) for c in (c1, c2, c3)])
    assert {k[1]: v.wire()["data"] for k, v in cloud.items()} == {
        c1.key: c1.local["data"],
        c2.key: {"score": 100},
        c3.key: {"score": 7},
    }


#: Errors as the hook meets them, with the technical text a user must never be shown.
ERRORS = [
    None,
    sdk.OfflineError("[Errno 111] Connection refused: ConnectError at 10.0.0.1:443"),
    sdk.ServerError("HTTP 503 from /api/migration/u/start: upstream timeout", status=503),
    sdk.AuthError("HTTP 401: token expired (exp=1700000000)", status=401),
    sdk.MigrationBlockedError("session 4f2a is active on device tab-9", reason="active-session"),
    sdk.CorruptStoreError("sqlite3.DatabaseError: database disk image is malformed"),
    sdk.ConfigurationError("ssl.SSLCertVerificationError: certificate verify failed"),
    sdk.VerificationError("checksum 9ab1 != 77cd for session 4f2a"),
]


@pytest.mark.parametrize("state", list(AutoState), ids=lambda s: s.value)
def test_every_states_message_is_plain_words_without_the_errors_text(state):
    error_names = {name for name in sdk.__all__ if name.endswith("Error")}
    for error in ERRORS:
        detail = str(error) if error else "technical detail"
        status = AutoStatus(state, detail, error)

        assert status.detail == detail  # the technical text stays, for a log or support
        assert status.message and status.message[0].isupper()
        assert detail not in status.message
        for word in (*error_names, "Errno", "HTTP", "session", "sqlite", "ssl", "token"):
            assert word not in status.message, (state, error, status.message)


def test_the_message_tells_the_user_why_the_data_waits_and_what_to_do():
    offline, server_busy, signed_out, other_device = (
        AutoStatus(AutoState.RETRYING, str(e), e).message for e in ERRORS[1:5]
    )
    assert offline == "Your data is safe on this device; waiting for the network to sync it"
    assert "busy" in server_busy and "sign you in" in signed_out
    assert "another of your devices" in other_device
    damaged = AutoStatus(AutoState.FAILED, str(ERRORS[5]), ERRORS[5]).message
    assert "could not be read" in damaged and "contact support" in damaged


def test_a_finished_migrations_status_says_so_in_plain_words(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(10))
    handle, rec = start_hook(server, store, "una", tmp_path, sync=False)

    assert handle.wait(DEADLINE) is AutoState.DONE
    assert handle.status.message == "Your data (12 items) is now in the cloud"
    assert handle.status.detail == "12 items migrated and verified"
    assert [s.message for s in rec.states][:2] == [
        "Checking the data on this device",
        "Moving your data to the cloud",
    ]


def paused_statuses(rec: Recorder) -> list[AutoStatus]:
    return [s for s in rec.states if s.state is AutoState.PAUSED]


def test_a_paused_hook_sends_nothing_and_resume_starts_the_migration_at_once(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(40))
    requests = count_requests(server)
    handle, rec = start_hook(server, store, None, tmp_path)
    assert handle.wait(DEADLINE) is AutoState.ANONYMOUS
    handle.set_network(available=False)

    handle.user_registered("vera", lambda: server.token("vera"))

    assert handle.wait(DEADLINE) is AutoState.PAUSED and handle.paused
    assert handle.status.message == (
        "Your data is safe on this device; it syncs when the network is back"
    )
    assert "network is unavailable" in handle.status.detail
    handle.set_network(available=True, metered=True)  # the thread goes round and waits on
    rec.reached(lambda: "metered" in rec.states[-1].detail)
    assert requests == []
    handle.set_network(available=True)

    assert handle.wait(DEADLINE) is AutoState.DONE and not handle.paused
    assert rec.done[0].item_count == 42 and requests


def test_pausing_mid_migration_leaves_at_a_safe_point_and_resume_continues_it(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(200))
    requests = count_requests(server)
    rec = Recorder()
    callbacks = rec.callbacks()
    handles: list[AutoMigration] = []

    def on_progress(progress: Progress) -> None:
        callbacks["on_progress"](progress)  # type: ignore[operator]
        uploading = progress.phase is ProgressPhase.UPLOADING
        if uploading and progress.items_done >= 50 and len(handles) == 1:
            handles.append(handles[0])  # pause once: from the migration thread, mid-upload
            handles[0].pause("the user asked to save data")

    handle = auto_migrate(
        http_client=server.client,
        user_id=None,  # nothing runs until the user registers: the handle is known by then
        token=None,
        store_path=store,
        options=MigrationOptions(batch_size=25, max_in_flight=1, cache_dir=tmp_path / "cache"),
        retry=RetryPolicy.none(),
        backoff=FAST,
        **(callbacks | {"on_progress": on_progress}),
    )
    handles.append(handle)
    assert handle.wait(DEADLINE) is AutoState.ANONYMOUS
    handle.user_registered("walt", lambda: server.token("walt"))

    assert handle.wait(DEADLINE) is AutoState.PAUSED
    assert handle.status.message == "Your data is safe on this device; syncing is paused"
    sent = len(requests)
    handle.pause("still saving data")  # the thread goes round, and still sends nothing
    rec.reached(lambda: "still saving" in rec.states[-1].detail)
    assert len(requests) == sent
    assert "stopped" not in rec.state_names()
    handle.resume()

    assert handle.wait(DEADLINE) is AutoState.DONE, rec.state_names()
    uploads = [p.items_done for p in rec.progress if p.phase is ProgressPhase.UPLOADING]
    assert uploads[-1] == 202 and rec.done[0].verified
    overall = [p.overall for p in rec.progress]
    assert overall == sorted(overall)  # one bar across the pause, never going back


def test_after_the_migration_a_paused_hook_keeps_local_writes_until_resumed(server, tmp_path):
    store = make_store(tmp_path / "store.sqlite3", learning_items(20))
    handle, rec = start_hook(server, store, "xena", tmp_path, push_delay=0.01, sync_interval=3600)
    assert handle.wait(DEADLINE) is AutoState.DONE  # then it waits for writes or the hour
    requests = count_requests(server)

    handle.set_network(available=True, metered=True)
    rec.reached(lambda: rec.states[-1].state is AutoState.PAUSED)
    with LocalStore(store) as app:
        app.put("lesson_progress", "while-paused", {"score": 1})
    handle.sync_now()
    handle.pause("checking that nothing is sent")
    rec.reached(lambda: "checking" in rec.states[-1].detail)
    assert requests == []
    assert not server.storage.cloud_items("xena", [("lesson_progress", "while-paused")])
    handle.resume()

    rec.reached(lambda: rec.state_names()[-1] == "synced" and len(paused_statuses(rec)) == 2)
    handle.stop()
    assert server.storage.cloud_items("xena", [("lesson_progress", "while-paused")])
    assert handle.last_sync is not None and handle.last_sync.pushed == 1
