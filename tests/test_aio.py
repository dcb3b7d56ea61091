"""The asyncio front door, against the real server on a loopback port: cancellation stops
at a safe point and the next call resumes, callbacks arrive on the loop's thread, and the
loop keeps ticking while a large store migrates."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sdk_fixtures import learning_items, make_store

import sdk
from sdk import (
    AsyncMigrationClient,
    ConfigurationError,
    MigrationClient,
    MigrationCompleted,
    MigrationOptions,
    MigrationOutcome,
    ProgressPhase,
)
from sdk._failpoints import enable, reset
from sdk._migration.journal import Journal, Phase, journal_path_for


@pytest.fixture(autouse=True)
def _no_failpoints() -> Iterator[None]:
    reset()
    yield
    reset()


def client_for(live_server, user: str, store: Path, **kwargs) -> AsyncMigrationClient:  # type: ignore[no-untyped-def]
    return AsyncMigrationClient(
        server=live_server.url,
        user_id=user,
        token=live_server.token(user),
        store_path=store,
        options=MigrationOptions(batch_size=kwargs.pop("batch_size", 1000), cache_dir=store.parent),
        **kwargs,
    )


def cloud_total(live_server, user: str) -> int:  # type: ignore[no-untyped-def]
    with httpx.Client(
        base_url=f"{live_server.url}/api/migration/{user}",
        headers={"Authorization": f"Bearer {live_server.token(user)}"},
    ) as http:
        return int(http.get("/summary").json()["summary"]["totalItems"])


def test_it_takes_the_sync_clients_arguments_one_for_one():
    import inspect

    ours = inspect.signature(AsyncMigrationClient).parameters
    theirs = inspect.signature(MigrationClient).parameters
    assert list(ours) == list(theirs)
    assert all(ours[name].default == theirs[name].default for name in ours)


def test_cancelling_mid_upload_stops_at_a_safe_point_and_the_next_call_resumes_losing_nothing(
    live_server, tmp_path
):
    user = "aio-cancel"
    store = make_store(tmp_path / "store.sqlite3", learning_items(998))  # 1,000 items
    batches = 50

    async def main() -> None:
        async with client_for(live_server, user, store, batch_size=20) as client:
            task = asyncio.create_task(client.migrate())
            loop = asyncio.get_running_loop()

            def cancel_and_hold() -> None:
                # On the worker thread, after the 3rd batch was answered: cancel the task
                # from the loop, and go on only once the cancellation set the stop event.
                loop.call_soon_threadsafe(task.cancel)
                stop = client._sync._stop  # type: ignore[union-attr]  # migrate()'s stop event
                assert stop is not None and stop.wait(30)

            enable("batch.answered", cancel_and_hold, at=3)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelled()

            with Journal(journal_path_for(store)) as journal:
                record = journal.load()
                acked = journal.acked_batches()
            assert record is not None and record.phase is Phase.STARTED
            assert 3 <= len(acked) < batches  # stopped mid-upload, the journal up to date
            assert (await client.status()).status.value != "completed"

            result = await client.migrate()

            assert result.outcome is MigrationOutcome.COMPLETED
            assert result.verified and result.item_count == 1000

    asyncio.run(main())
    assert cloud_total(live_server, user) == 1000


def test_callbacks_run_on_the_loops_thread(live_server, tmp_path):
    user = "aio-callbacks"
    store = make_store(tmp_path / "store.sqlite3", learning_items(98))
    threads: set[int] = set()
    phases: list[ProgressPhase] = []
    events: list[object] = []

    def on_progress(progress) -> None:  # type: ignore[no-untyped-def]
        threads.add(threading.get_ident())
        phases.append(progress.phase)

    def on_event(event: object) -> None:
        threads.add(threading.get_ident())
        events.append(event)

    async def main() -> int:
        async with client_for(
            live_server, user, store, batch_size=10, on_progress=on_progress, on_event=on_event
        ) as client:
            await client.migrate()
            await asyncio.sleep(0)  # the last call_soon_threadsafe callbacks run now
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert threads == {loop_thread}
    assert ProgressPhase.UPLOADING in phases
    assert any(isinstance(event, MigrationCompleted) for event in events)


def test_a_bad_argument_is_raised_by_the_first_call_and_the_loop_never_waits_for_imports(
    tmp_path,
):
    async def main() -> None:
        client = AsyncMigrationClient(user_id="u1", token="t", store_path=tmp_path / "s")
        with pytest.raises(ConfigurationError, match="exactly one of server"):
            await client.detect()

    asyncio.run(main())


#: The SDK's layers that read the store, speak HTTP, snapshot, hash or parse: none of
#: their code may run on the loop's thread. (Checking the options the app builds there,
#: ``MigrationOptions`` and its conflict policy, is the app's own cheap call.)
BLOCKING_LAYERS = tuple(
    str(Path(sdk.__file__).parent / layer)
    for layer in ("_store", "_transport", "_migration", "_sync", "_wire")
)
APP_SIDE = str(Path(sdk.__file__).parent / "_migration" / "options.py")


def test_the_loop_keeps_ticking_while_100k_items_migrate(live_server, tmp_path, capsys):
    """The loop never runs the SDK's work: no function of its blocking layers is entered
    on the loop's thread during a 100k-item migration (a profile hook on that thread
    records every call). The loop's lag is measured and printed; a time asserted here
    would fail on a loaded machine for reasons that are not the SDK's."""
    user = "aio-lag"
    store = make_store(tmp_path / "store.sqlite3", learning_items(99_998))
    tick = 0.005
    gaps: list[float] = []
    entered: set[str] = set()

    def on_call(frame, event, arg):  # type: ignore[no-untyped-def]
        where = frame.f_code.co_filename
        if event == "call" and where.startswith(BLOCKING_LAYERS) and where != APP_SIDE:
            entered.add(f"{where}:{frame.f_code.co_name}")

    async def ticker(done: asyncio.Event) -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(tick)
            now = time.perf_counter()
            gaps.append(now - last - tick)  # how late the loop woke this ticker
            last = now

    async def main() -> int:
        done = asyncio.Event()
        ticking = asyncio.create_task(ticker(done))
        await asyncio.sleep(0)
        sys.setprofile(on_call)  # this thread only: the loop's
        try:
            async with client_for(live_server, user, store) as client:  # built on first call
                result = await client.migrate()
        finally:
            sys.setprofile(None)
        done.set()
        await ticking
        return result.item_count

    assert asyncio.run(main()) == 100_000
    assert sorted(entered) == [], sorted(entered)
    assert len(gaps) > 10  # the loop kept waking the ticker all along
    with capsys.disabled():
        p99 = sorted(gaps)[int(len(gaps) * 0.99)]
        print(f"\nloop lag, 100k items: max {max(gaps) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
