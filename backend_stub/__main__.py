"""Command line: ``python -m backend_stub [serve|token|seed|register|worker|aws-setup] ...``.

``serve`` (the default command) binds the socket itself, prints exactly one line,
``listening on http://HOST:PORT``, to stdout and serves until interrupted (logs go to
stderr; Ctrl-C or SIGTERM stop it gracefully, exit status 0). The other commands work
on the same data folder::

    python -m backend_stub --port 0 --data-dir /tmp/mig     # serve on a free port
    python -m backend_stub token alice --ttl 600            # print a dev bearer token
    python -m backend_stub seed alice items.jsonl --device-id phone --data-dir /tmp/mig
    python -m backend_stub register alice --data-dir /tmp/mig
    MIGRATION_BACKEND=aws python -m backend_stub aws-setup  # create tables, bucket, queues
    MIGRATION_BACKEND=aws python -m backend_stub worker     # process queued batches

Settings come from ``MIGRATION_*`` environment variables (see
:mod:`backend_stub.settings`); ``--data-dir`` overrides ``MIGRATION_DATA_DIR``. With
``MIGRATION_BACKEND=aws`` every command works on the AWS resources instead; ``worker``
runs until interrupted (SIGINT or SIGTERM: it finishes the message in hand), or with
``--once`` until the queue is empty.

    >>> main(["token", "alice", "--ttl", "60"])  # doctest: +ELLIPSIS
    ey...
    0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from backend_stub.app import create_app, open_storage
from backend_stub.auth import issue_token
from backend_stub.events import UserRegistered, handle_user_registered
from backend_stub.identity import announce_token_mode
from backend_stub.items import seed_cloud_items
from backend_stub.service import now_ms
from backend_stub.settings import Settings

__all__ = ["main", "serve"]

_COMMANDS = ("serve", "token", "seed", "register", "worker", "aws-setup")


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the app on ``host:port`` (``port=0``: any free port) until interrupted.

    The socket is bound before the line is printed, so a client that read the line can
    connect at once (connections wait in the backlog while the app starts). It blocks, so
    run it in a process of its own::

        serve(Settings(data_dir=Path("migration-data")), port=0)
        # prints: listening on http://127.0.0.1:41234
    """
    import uvicorn  # only the serve command needs it

    from backend_stub.timeouts import guarded_protocol

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this. Without it every answer waits ~40 ms: uvicorn writes
    # the head and the body separately, and Nagle holds the body for the client's
    # delayed ACK (measured: 44 ms -> 0.8 ms per request on loopback).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    app = create_app(settings)
    _tune_gc()
    # log_config=None: uvicorn's own config would log requests to stdout, which must
    # carry nothing but the listening line. The protocol bounds the time a client has
    # to send a request (settings.timeouts); keep-alive is the same idle bound.
    timeouts = settings.timeouts
    config = uvicorn.Config(
        app,
        log_config=None,
        lifespan="on",
        http=guarded_protocol(timeouts),
        timeout_keep_alive=max(1, round(timeouts.idle)),
    )
    server = uvicorn.Server(config)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"listening on http://{shown}:{sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


def _tune_gc() -> None:
    """Collect cycles less often while serving (this process only, never the library).

    A batch of 1,000 items allocates thousands of containers, so the default threshold
    (700) runs the young collection several times per batch and a full one every few
    batches, each walking every object the server imported. Freezing what exists after
    start-up takes those out of every walk; a larger first threshold runs the young
    collection about once per batch. `make bench` measured the server's time per batch
    with and without this.
    """
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    announce_token_mode(settings)
    # uvicorn shuts down gracefully on Ctrl-C or SIGTERM, then raises the signal again
    # for whoever runs it: here that is us, and a stop asked for is not an error. SIGTERM's
    # default would end the process with status 143; ours makes it the same clean stop.
    previous = signal.signal(signal.SIGTERM, _stop_asked)
    try:
        serve(settings, host=args.host, port=args.port)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _stop_asked(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _token(args: argparse.Namespace, settings: Settings) -> int:
    if settings.identity is not None:
        raise ValueError(
            "the server verifies tokens from MIGRATION_JWKS_URL: get one from the identity "
            "provider ('token' mints development tokens only)"
        )
    print(issue_token(args.user, settings.jwt_secret, ttl=args.ttl))
    return 0


def _seed(args: argparse.Namespace, settings: Settings) -> int:
    storage = open_storage(settings)
    try:
        with _open_lines(args.file) as lines:
            count = seed_cloud_items(
                storage, args.user, _json_lines(lines), device_id=args.device_id, now=now_ms()
            )
    finally:
        storage.close()
    print(f"seeded {count} item(s) for {args.user} in {_where(settings)}")
    return 0


def _register(args: argparse.Namespace, settings: Settings) -> int:
    storage = open_storage(settings)
    try:
        handle_user_registered(storage, UserRegistered(user_id=args.user, registered_at=now_ms()))
    finally:
        storage.close()
    print(f"{args.user} is now a migration candidate")
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from backend_stub.monitoring import configure_logging
    from backend_stub.storage.aws import AwsStorage
    from backend_stub.worker import Worker

    if settings.backend != "aws":
        raise ValueError("the worker processes the aws backend's queue: set MIGRATION_BACKEND=aws")
    configure_logging(json_lines=os.environ.get("MIGRATION_LOG_FORMAT", "json") != "text")
    storage = AwsStorage.open(settings.aws)
    try:
        worker = Worker(storage, settings, wait_seconds=args.poll_wait)
        if args.once:
            print(f"handled {worker.drain(timeout=args.timeout)} message(s)")
            return 0
        stop = threading.Event()
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, lambda *_: stop.set())
        worker.run(stop)
    finally:
        storage.close()
    return 0


def _aws_setup(args: argparse.Namespace, settings: Settings) -> int:
    from backend_stub.storage.aws_resources import AwsResources, provision

    provision(AwsResources(settings.aws))
    print(f"aws resources ready: table {settings.aws.table}, bucket {settings.aws.bucket}")
    return 0


def _where(settings: Settings) -> str:
    if settings.backend == "aws":
        return f"table {settings.aws.table}"
    return str(settings.data_dir)


@contextlib.contextmanager
def _open_lines(name: str) -> Iterator[TextIO]:
    if name == "-":
        yield sys.stdin
        return
    with Path(name).open(encoding="utf-8") as lines:
        yield lines


def _json_lines(lines: TextIO) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"line {number} is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ValueError(f"line {number} is not a JSON object")
        yield value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend_stub",
        description="Reference migration server (development use). 'serve' is the default command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve_cmd = commands.add_parser("serve", help="serve the migration API")
    serve_cmd.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    serve_cmd.add_argument(
        "--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)"
    )
    serve_cmd.set_defaults(handler=_serve)

    token_cmd = commands.add_parser("token", help="print a development bearer token")
    token_cmd.add_argument("user", metavar="USER")
    token_cmd.add_argument(
        "--ttl", type=int, default=3600, help="seconds of validity (default: %(default)s)"
    )
    token_cmd.set_defaults(handler=_token)

    seed_cmd = commands.add_parser("seed", help="write a user's cloud items from a JSONL file")
    seed_cmd.add_argument("user", metavar="USER")
    seed_cmd.add_argument("file", metavar="FILE.jsonl", help="one wire item per line; - for stdin")
    seed_cmd.add_argument("--device-id", default="seed", help="device credited with the items")
    seed_cmd.set_defaults(handler=_seed)

    register_cmd = commands.add_parser("register", help="feed a UserRegistered event")
    register_cmd.add_argument("user", metavar="USER")
    register_cmd.set_defaults(handler=_register)

    worker_cmd = commands.add_parser("worker", help="process the aws backend's batch queue")
    worker_cmd.add_argument(
        "--once", action="store_true", help="stop when the queue is empty instead of waiting"
    )
    worker_cmd.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="with --once: give up after this many seconds (default: %(default)s)",
    )
    worker_cmd.add_argument(
        "--poll-wait",
        type=int,
        choices=range(21),
        default=20,
        metavar="SECONDS",
        help="how long a receive waits for a job, 0-20 (SQS long polling); a stop signal"
        " lets the receive in progress end first (default: %(default)s)",
    )
    worker_cmd.set_defaults(handler=_worker)

    setup_cmd = commands.add_parser(
        "aws-setup", help="create the aws backend's table, bucket, queues and bus if missing"
    )
    setup_cmd.set_defaults(handler=_aws_setup)

    for command in (serve_cmd, seed_cmd, register_cmd):
        command.add_argument(
            "--data-dir",
            type=Path,
            help="data folder (default: $MIGRATION_DATA_DIR or ./migration-data)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status.

    >>> main(["register", "-h"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    SystemExit: 0
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in (*_COMMANDS, "-h", "--help"):
        args.insert(0, "serve")
    parsed = _parser().parse_args(args)
    try:
        settings = Settings.from_env()
        if getattr(parsed, "data_dir", None) is not None:
            settings = dataclasses.replace(settings, data_dir=parsed.data_dir)
        status: int = parsed.handler(parsed, settings)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
