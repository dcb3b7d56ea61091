"""A fault-injecting HTTP/1.1 proxy on loopback, for the network fault tests.

It sits between the SDK and a real server (``python -m backend_stub``), reads each
request whole, and either forwards it faithfully or applies a fault, chosen by a seeded
random generator so a failing run can be replayed::

    with FaultProxy(("127.0.0.1", server_port), seed=7) as proxy:
        proxy.inject(Fault.RESET_AFTER, rate=0.3)
        client = httpx.Client(base_url=proxy.url, timeout=1.0)
        ...
        proxy.heal()

Faults (:class:`Fault`): latency beyond the client's read timeout, a connection reset
after the request reached the server, the request or the response cut short, a black
hole (the request is swallowed, nothing ever answers), refused connections (the proxy
stops listening) and flapping (every connection is a coin toss between passing and being
reset). The proxy runs its own asyncio loop in a thread; it counts what it saw, including
the 5xx answers the real server gave (``upstream_5xx``), which must stay at zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import random
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["Fault", "FaultProxy", "ProxyStats"]

# Which requests a fault applies to: (method, path) -> bool.
Selector = Callable[[str, str], bool]


class Fault(str, enum.Enum):
    LATENCY = "latency"  # the answer is held back longer than the client waits
    RESET_AFTER = "reset-after"  # the server handled the request; the client gets a RST
    TRUNCATE_REQUEST = "truncate-request"  # half the body reaches the server, then both drop
    TRUNCATE_RESPONSE = "truncate-response"  # the answer stops half way, then a RST
    BLACK_HOLE = "black-hole"  # swallowed: no answer, no close
    REFUSED = "refused"  # nobody listens: connection refused
    FLAPPING = "flapping"  # each connection either passes or is reset, at random


@dataclasses.dataclass
class ProxyStats:
    connections: int = 0
    requests: int = 0
    forwarded: int = 0
    faults: dict[str, int] = dataclasses.field(default_factory=dict)
    upstream_5xx: int = 0
    upstream_down: int = 0

    def count(self, fault: Fault) -> None:
        self.faults[fault.value] = self.faults.get(fault.value, 0) + 1


class FaultProxy:
    """The proxy; ``upstream`` is the real server's (host, port)."""

    def __init__(
        self, upstream: tuple[str, int], *, seed: int, latency: float = 2.0, host: str = "127.0.0.1"
    ) -> None:
        self.upstream = upstream
        self.latency = latency
        self.stats = ProxyStats()
        self._host = host
        self._port = 0
        self._rng = random.Random(seed)
        self._fault: Fault | None = None
        self._rate = 1.0
        self._selector: Selector | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._healed = asyncio.Event()
        self._closed = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ control (any thread)

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    def inject(self, fault: Fault, *, rate: float = 1.0, only: Selector | None = None) -> None:
        """Apply ``fault`` to a ``rate`` share of the requests ``only`` selects (all)."""
        with self._lock:
            self._fault, self._rate, self._selector = fault, rate, only
        self._call(self._apply_listening())

    def heal(self) -> None:
        """Stop injecting: listen again, release black-holed connections, pass everything."""
        with self._lock:
            self._fault = None
        self._call(self._apply_listening())

    def set_upstream(self, upstream: tuple[str, int]) -> None:
        with self._lock:
            self.upstream = upstream

    def _call(self, coro: object) -> None:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        future.result(timeout=10)

    # ------------------------------------------------------------------ the loop's side

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _apply_listening(self) -> None:
        refusing = self._fault is Fault.REFUSED
        if refusing and self._server is not None:
            self._server.close()
            self._server = None
            self.stats.count(Fault.REFUSED)
            for writer in list(self._writers):
                self.stats.count(Fault.REFUSED)
                _reset(writer)
        elif not refusing and self._server is None:
            await self._listen()
        if self._fault is None:
            self._healed.set()
            self._healed = asyncio.Event()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._closed.set()
        self._healed.set()
        for writer in list(self._writers):
            _reset(writer)
        # Every handler ends on its own once its connection is gone; wait for them, so
        # the loop stops with nothing pending.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)

    def _decide(self, method: str, path: str) -> Fault | None:
        with self._lock:
            fault, rate, selector = self._fault, self._rate, self._selector
            if fault is None or (selector is not None and not selector(method, path)):
                return None
            if fault is Fault.FLAPPING:
                return Fault.RESET_AFTER if self._rng.random() < rate else None
            return fault if self._rng.random() < rate else None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # type: ignore[arg-type]
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                method, path, length = _request_line(head)
                body = await reader.readexactly(length)
                self.stats.requests += 1
                fault = self._decide(method, path)
                if fault is not None:
                    self.stats.count(fault)
                if not await self._serve_one(fault, head, body, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            _reset(writer)

    async def _serve_one(
        self,
        fault: Fault | None,
        head: bytes,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Handle one request; False when the client connection must end."""
        if fault is Fault.BLACK_HOLE:
            healed = asyncio.ensure_future(self._healed.wait())
            gone = asyncio.ensure_future(reader.read(1))
            await asyncio.wait({healed, gone}, return_when=asyncio.FIRST_COMPLETED)
            healed.cancel()
            gone.cancel()
            return False
        if fault is Fault.TRUNCATE_REQUEST:
            await self._send_upstream(head, body[: len(body) // 2], read=False)
            return False
        answer = await self._send_upstream(head, body, read=True)
        if answer is None:
            self.stats.upstream_down += 1
            return False
        if answer[9:10] == b"5":  # b"HTTP/1.1 5xx"
            self.stats.upstream_5xx += 1
        self.stats.forwarded += 1
        if fault is Fault.RESET_AFTER:
            return False
        if fault is Fault.TRUNCATE_RESPONSE:
            writer.write(answer[: max(1, len(answer) - 1 - self._rng.randrange(len(answer) // 2))])
            await writer.drain()
            return False
        if fault is Fault.LATENCY:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self.latency)
            if self._closed.is_set():
                return False
        writer.write(answer)
        await writer.drain()
        return True

    async def _send_upstream(self, head: bytes, body: bytes, *, read: bool) -> bytes | None:
        """One request on a fresh upstream connection; the whole raw answer, keep-alive."""
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            return None
        try:
            up_writer.write(_with_connection_close(head) + body)
            await up_writer.drain()
            if not read:
                return b""
            answer = await up_reader.read()
        except OSError:
            return None
        finally:
            _reset(up_writer)
        return _keep_alive(answer) if answer else None


def _request_line(head: bytes) -> tuple[str, str, int]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return method, path, length


def _with_connection_close(head: bytes) -> bytes:
    lines = [
        line
        for line in head.split(b"\r\n")
        if not line.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    # head ends with b"\r\n\r\n": the last two entries are empty.
    return b"\r\n".join([*lines[:-2], b"Connection: close", b"", b""])


def _keep_alive(answer: bytes) -> bytes:
    head, sep, body = answer.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join(lines) + sep + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST (SO_LINGER 0), as a middlebox or a crashed peer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
