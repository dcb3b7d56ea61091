"""Connection timeouts: a slow or silent client cannot hold a connection open for ever.

uvicorn closes a keep-alive connection that stays idle after a response
(``timeout_keep_alive``), but with its h11 protocol nothing bounds the time before the
first request, the time a request head takes to arrive, or the time its body takes: a
client that connects and says nothing, or trickles a byte now and then (slowloris),
keeps its connection, and a file descriptor, as long as it likes. :class:`GuardedH11Protocol`
adds those bounds:

- ``idle``: a new connection must start a request within this many seconds (between
  requests, uvicorn's keep-alive timeout, set to the same value, does the same);
- ``header``: once its first byte arrived, the whole request head must arrive within it;
- ``body``: once the head arrived, the whole body must arrive within it.

Each is a deadline for the whole phase, not a gap between reads, so trickling bytes
does not extend it. The connection is closed when one passes (an app waiting for the
body sees the client disconnect)::

    >>> guarded_protocol(ConnectionTimeouts(header=10)).func.__name__
    'GuardedH11Protocol'

The bounds are :class:`~backend_stub.settings.ConnectionTimeouts`, part of the server's
settings (``MIGRATION_IDLE_TIMEOUT``, ``MIGRATION_HEADER_TIMEOUT``,
``MIGRATION_BODY_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from backend_stub.settings import ConnectionTimeouts

__all__ = ["GuardedH11Protocol", "guarded_protocol"]

logger = logging.getLogger(__name__)

Phase = Literal["idle", "header", "body"]


def guarded_protocol(timeouts: ConnectionTimeouts) -> Any:
    """The protocol factory to give uvicorn: ``uvicorn.Config(app, http=...)``.

    >>> guarded_protocol(ConnectionTimeouts(body=60)).keywords["timeouts"].body
    60.0
    """
    return functools.partial(GuardedH11Protocol, timeouts=timeouts)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on the idle, header and body phases.

    >>> issubclass(GuardedH11Protocol, H11Protocol)
    True
    """

    def __init__(self, *args: Any, timeouts: ConnectionTimeouts, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeouts = timeouts
        self._phase: Phase | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._enter("idle")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:
            # A partial head: the deadline runs from its first byte, never re-armed
            # by the bytes that follow.
            self._enter("header")
        elif state is h11.SEND_BODY:
            self._enter("body")
        else:  # the request is in; the app and uvicorn's keep-alive take it from here
            self._enter(None)

    def on_response_complete(self) -> None:
        self._enter(None)  # uvicorn arms its keep-alive timeout (our idle one)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        super().connection_lost(exc)

    def _enter(self, phase: Phase | None) -> None:
        if phase == self._phase:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            seconds = getattr(self._timeouts, phase)
            self._deadline = self.loop.call_later(seconds, self._expire, phase, seconds)

    def _expire(self, phase: Phase, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        what = {
            "idle": "sent no request",
            "header": "did not finish its request head",
            "body": "did not finish its request body",
        }[phase]
        client = "{}:{}".format(*self.client) if self.client else "a client"
        logger.info("closing the connection of %s, which %s within %g s", client, what, seconds)
        self.transport.close()
