"""The asyncio front door: :class:`AsyncMigrationClient`, for apps that run an event loop.

It wraps :class:`sdk.MigrationClient`: every blocking call runs in a worker thread, so the
loop is never blocked by the SDK (not even by importing it: the sync client, httpx and
sqlite-utils are loaded in that thread on the first call). Callbacks run on the loop's thread.
Cancelling a :meth:`~AsyncMigrationClient.migrate` task stops the migration at its next
safe point, waits for the worker to leave, then raises :class:`asyncio.CancelledError`;
the next call resumes where it stopped::

    async with AsyncMigrationClient(server=URL, user_id=user, token=get_token,
                                    app_name="FlashCards", on_progress=bar.update) as client:
        task = asyncio.create_task(client.migrate())
        ...
        task.cancel()            # the app is suspended: stops at a safe point
        ...
        result = await client.migrate()   # resumes; nothing is sent twice or lost
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

# Only light imports at module level: the app may import this from a coroutine.
if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from ._client import Detection, MigrationClient, Token
    from ._conflicts.policy import Conflict
    from ._events import Event, Progress
    from ._migration.engine import MigrationResult
    from ._migration.options import MigrationOptions
    from ._migration.plan import MigrationPlan
    from ._store.values import Attachment
    from ._sync.proof import SyncStatus
    from ._sync.run import SyncResult
    from ._transport.retry import RetryPolicy
    from ._wire import models as c

__all__ = ["AsyncMigrationClient"]

_T = TypeVar("_T")


class AsyncMigrationClient:
    """:class:`sdk.MigrationClient` for asyncio: the same arguments, awaitable methods.

    Nothing blocks the loop: each call runs the sync client's method in a worker thread
    (the client itself is built there on first use), and ``on_progress`` and ``on_event``
    are delivered on the loop's thread with ``loop.call_soon_threadsafe``. Use it from one
    event loop. Cancelling :meth:`migrate` stops at a safe point (see the module's docs);
    cancelling any other call returns at once and lets its thread finish in the background.

    >>> import asyncio, tempfile, pathlib
    >>> store = pathlib.Path(tempfile.mkdtemp()) / "store.sqlite3"   # no store there
    >>> async def main():
    ...     async with AsyncMigrationClient(server="http://127.0.0.1:9", user_id="u1",
    ...                                     token="t", store_path=store) as client:
    ...         return (await client.detect()).local.state.value
    >>> asyncio.run(main())
    'no_store'
    """

    def __init__(
        self,
        *,
        user_id: str,
        token: Token,
        server: str | None = None,
        http_client: httpx.Client | None = None,
        request_timeout: float = 30.0,
        store_path: str | Path | None = None,
        app_name: str | None = None,
        options: MigrationOptions | None = None,
        retry: RetryPolicy | None = None,
        on_progress: Callable[[Progress], object] | None = None,
        on_event: Callable[[Event], object] | None = None,
    ) -> None:
        self._arguments: dict[str, Any] = {
            "user_id": user_id,
            "token": token,
            "server": server,
            "http_client": http_client,
            "request_timeout": request_timeout,
            "store_path": store_path,
            "app_name": app_name,
            "options": options,
            "retry": retry,
        }
        self._on_progress = on_progress
        self._on_event = on_event
        self._sync: MigrationClient | None = None
        self._building: asyncio.Future[MigrationClient] | None = None

    # ------------------------------------------------------------------ the calls

    async def detect(self) -> Detection:
        """:meth:`sdk.MigrationClient.detect`, awaitable."""
        return await self._call(lambda sync: sync.detect())

    async def migrate(self) -> MigrationResult:
        """:meth:`sdk.MigrationClient.migrate`, awaitable and cancellable at a safe point.

        On cancellation the migration's stop event is set, the worker thread is awaited
        until it has left at a safe point (between batches or steps, or during a retry
        wait), and :class:`asyncio.CancelledError` is raised; the journal keeps everything,
        so the next call resumes.
        """
        return await self._stoppable(lambda sync, stop: sync.migrate(stop=stop))

    async def sync(self, *, full: bool = False) -> SyncResult:
        """:meth:`sdk.MigrationClient.sync`, awaitable and cancellable at a safe point like
        :meth:`migrate` (the next call resumes)."""
        return await self._stoppable(lambda sync, stop: sync.sync(stop=stop, full=full))

    async def verify(self, *, full: bool = False) -> SyncStatus:
        """:meth:`sdk.MigrationClient.verify`, awaitable."""
        return await self._call(lambda sync: sync.verify(full=full))

    async def status(self) -> c.GetMigrationStatusResponse:
        """:meth:`sdk.MigrationClient.status`, awaitable."""
        return await self._call(lambda sync: sync.status())

    async def summary(self) -> c.GetMigrationSummaryResponse:
        """:meth:`sdk.MigrationClient.summary`, awaitable."""
        return await self._call(lambda sync: sync.summary())

    async def plan(self) -> MigrationPlan:
        """:meth:`sdk.MigrationClient.plan`, awaitable."""
        return await self._call(lambda sync: sync.plan())

    async def cancel(self) -> bool:
        """:meth:`sdk.MigrationClient.cancel` (cancel the migration itself), awaitable."""
        return await self._call(lambda sync: sync.cancel())

    async def fetch_attachment(self, attachment: Attachment | str) -> None:
        """:meth:`sdk.MigrationClient.fetch_attachment`, awaitable."""
        await self._call(lambda sync: sync.fetch_attachment(attachment))

    async def pending_conflicts(self) -> list[Conflict]:
        """:meth:`sdk.MigrationClient.pending_conflicts`, awaitable."""
        return await self._call(lambda sync: sync.pending_conflicts())

    async def resolve_conflict(
        self, conflict_id: str, choice: str, data: dict[str, Any] | None = None
    ) -> None:
        """:meth:`sdk.MigrationClient.resolve_conflict`, awaitable."""
        await self._call(lambda sync: sync.resolve_conflict(conflict_id, choice, data))

    async def aclose(self) -> None:
        """Close the sync client (and the HTTP client it made), in a worker thread."""
        sync, self._sync, self._building = self._sync, None, None
        if sync is not None:
            await asyncio.to_thread(sync.close)

    async def __aenter__(self) -> AsyncMigrationClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ machinery

    async def _call(self, call: Callable[[MigrationClient], _T]) -> _T:
        sync = await self._client()
        return await asyncio.to_thread(call, sync)

    async def _stoppable(self, call: Callable[[MigrationClient, threading.Event], _T]) -> _T:
        """Run ``call(sync, stop)`` in a thread; on cancellation set ``stop``, wait for the
        thread to leave at its safe point, then re-raise the cancellation."""
        sync = await self._client()
        stop = threading.Event()
        # A task of its own (shielded below): cancelling the caller must not abandon it.
        work = asyncio.ensure_future(asyncio.to_thread(call, sync, stop))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            stop.set()
            await _outlive_cancellation(work)
            raise

    async def _client(self) -> MigrationClient:
        if self._sync is None:
            if self._building is None:
                loop = asyncio.get_running_loop()
                self._building = asyncio.ensure_future(asyncio.to_thread(self._build, loop))
            building = self._building
            try:
                # Shielded: one caller's cancellation must not cancel the build for others.
                self._sync = await asyncio.shield(building)
            except asyncio.CancelledError:
                raise
            except BaseException:
                if self._building is building:
                    self._building = None  # a bad argument: reported now, built anew next call
                raise
        return self._sync

    def _build(self, loop: asyncio.AbstractEventLoop) -> MigrationClient:
        from ._client import MigrationClient  # in the worker thread: the import is heavy

        return MigrationClient(
            **self._arguments,
            on_progress=_on_loop(loop, self._on_progress),
            on_event=_on_loop(loop, self._on_event),
        )


async def _outlive_cancellation(work: asyncio.Future[Any]) -> None:
    """Wait until ``work`` is done, whatever it raised, even through further cancellations:
    the thread must have left before the caller may touch the store again."""
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            continue
        except BaseException:
            break
    if not work.cancelled():
        work.exception()  # retrieved: a failure after the stop is not "never retrieved"


def _on_loop(
    loop: asyncio.AbstractEventLoop, callback: Callable[[_T], object] | None
) -> Callable[[_T], object] | None:
    """``callback``, called on ``loop``'s thread whichever thread calls the result."""
    if callback is None:
        return None

    def relay(value: _T) -> None:
        # RuntimeError: the loop is closed, nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, value)

    return relay
