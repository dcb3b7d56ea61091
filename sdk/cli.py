"""The command line: ``python -m sdk COMMAND`` or ``offline-migrate COMMAND``.

Commands: ``detect``, ``plan``, ``migrate``, ``status``, ``conflicts``, ``resolve``,
``cancel`` and ``verify``; ``sample`` makes a sample store to try them on. Every
command takes the store (``--store PATH`` or ``--app NAME``) and the server, user and
token (``--server``, ``--user``, ``--token``, or the ``MIGRATION_SERVER``,
``MIGRATION_USER`` and ``MIGRATION_TOKEN`` environment variables); ``detect`` and
``status`` also work without them, on the device alone. ``--json``
prints one JSON object instead of text::

    offline-migrate detect  --store ~/.local/share/FlashCards/store.sqlite3
    offline-migrate plan    --app FlashCards --strategy newest_wins
    offline-migrate migrate --app FlashCards --strategy preferences=local_wins
    offline-migrate conflicts --app FlashCards
    offline-migrate resolve --app FlashCards --all local && offline-migrate migrate ...

Exit codes, the same for every command:

- 0: done (for ``migrate`` and ``verify``: migrated and verified);
- 1: failed: something the same command will not get past by itself;
- 2: usage error: a bad or missing option;
- 3: pending: offline, conflicts waiting for a decision, another process migrating the
  store, or a migration stopped by Ctrl-C; run the same command again later;
- 4: no store at the path: nothing was done (a mistyped ``--store``, or an app that never
  saved anything on this device). A path that is not a store (a folder, another app's
  file) fails with 1; neither leaves anything beside it.

A migration killed at any moment continues when the same command runs again.

    >>> main(["--version"])
    offline-migrate 0.1.0
    0
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import httpx

from ._client import MigrationClient
from ._conflicts.policy import ConflictPolicy
from ._display import counts, describe_item, open_progress
from ._errors import (
    ConfigurationError,
    EndpointError,
    MigrationBlockedError,
    MigrationError,
    NotFoundError,
    RefusedError,
    StoreNotFoundError,
    VerificationError,
)
from ._migration.engine import MigrationOutcome, MigrationResult
from ._migration.journal import journal_path_for
from ._migration.lock import MigrationLock, lock_path_for
from ._migration.options import MigrationOptions
from ._store.detect import LocalDetection, LocalState, detect_local, inspect_store
from ._store.local import LocalStore, default_store_path
from ._sync.proof import sync_status
from ._sync.run import SyncResult
from ._transport.retry import RetryPolicy
from ._wire.canonical import API_PREFIX

__all__ = ["EXIT_DONE", "EXIT_FAILED", "EXIT_NO_STORE", "EXIT_PENDING", "EXIT_USAGE", "main"]

_R = TypeVar("_R")

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PENDING = 3
EXIT_NO_STORE = 4

_STRATEGIES = ("server_wins", "local_wins", "newest_wins", "field_merge", "manual")
_STATUS = {
    EXIT_DONE: "done",
    EXIT_FAILED: "failed",
    EXIT_USAGE: "usage",
    EXIT_PENDING: "pending",
    EXIT_NO_STORE: "no_store",
}


class UsageError(Exception):
    """A bad or missing option (exit code 2)."""


@dataclasses.dataclass
class Answer:
    """What a command found: the exit code, the JSON fields and the lines for a person."""

    code: int
    fields: dict[str, Any]
    lines: list[str]


# --------------------------------------------------------------------------- entry


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.version:
        from . import __version__

        print(f"offline-migrate {__version__}")
        return EXIT_DONE
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("offline-migrate: error: name a command (see --help)", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    waits = _show_waits(args)
    try:
        answer: Answer = args.run(args)
    except UsageError as exc:
        answer = _failure(EXIT_USAGE, exc, f"{exc} (see `{args.command} --help`)")
    except StoreNotFoundError as exc:
        answer = _failure(EXIT_NO_STORE, exc, str(exc))
    except MigrationError as exc:
        code, message = _explain(args, exc)
        answer = _failure(code, exc, message)
    except KeyboardInterrupt:
        answer = Answer(EXIT_PENDING, {"interrupted": True}, ["interrupted; nothing was lost"])
    except Exception as exc:  # the last line of defence: a message, never a traceback
        logging.getLogger(__name__).debug("internal error", exc_info=True)
        answer = _failure(
            EXIT_FAILED,
            exc,
            f"internal error ({type(exc).__name__}: {exc}); please report it with the "
            "output of the same command run with --verbose",
        )
    finally:
        waits()
    _print(args, answer)
    return answer.code


def _failure(code: int, exc: BaseException, message: str) -> Answer:
    error = {"type": type(exc).__name__, "message": message}
    return Answer(code, {"error": error}, [])


def _error_fields(args: argparse.Namespace, exc: MigrationError) -> tuple[int, dict[str, str]]:
    """The exit code and the ``error`` field of a command that reports what it found
    before a server error."""
    code, message = _explain(args, exc)
    return code, {"type": type(exc).__name__, "message": message}


def _explain(args: argparse.Namespace, exc: MigrationError) -> tuple[int, str]:
    """The exit code and the message a person at a terminal needs for ``exc``: the SDK's
    advice speaks of its Python API, which a shell user cannot call."""
    cause = exc.__cause__
    if isinstance(exc, EndpointError) and isinstance(cause, RefusedError) and cause.status == 404:
        exc = cause  # detect answered 404: the URL is wrong, said the command line's way
    if isinstance(exc, RefusedError) and exc.status == 404 and _wrong_server(args, exc):
        server = _server_url(args)
        how = "" if exc.code else ", without the API's problem details"
        return EXIT_USAGE, (
            f"{server} does not serve the migration API (it answered 404 Not Found{how}): give "
            "--server (or MIGRATION_SERVER) the server's root URL, such as "
            "http://127.0.0.1:8000, without /api or any other path"
        )
    if isinstance(exc, NotFoundError):
        return EXIT_FAILED, (
            f"{_for_the_command_line(str(exc).split('; ', 1)[0])}; the server no longer knows "
            "this migration's session (it expired or was cancelled): run `status` to see "
            "where it stands, then `migrate` to start again"
        )
    code = EXIT_USAGE if isinstance(exc, ConfigurationError) else _code_for(exc)
    return code, _for_the_command_line(str(exc))


def _server_url(args: argparse.Namespace) -> str:
    return str(args.server or os.environ.get("MIGRATION_SERVER") or "the server")


def _wrong_server(args: argparse.Namespace, exc: RefusedError) -> bool:
    """Whether a 404 means the URL is wrong rather than the session gone: not our
    problem+json at all, or ``detect`` (which every user has) not found either."""
    if exc.code is None:
        return True
    credentials = _credentials(args, required=False)
    if credentials is None:
        return False
    server, user, token = credentials
    url = f"{server.rstrip('/')}{API_PREFIX}/{quote(user, safe='')}/detect"
    try:
        answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    except httpx.HTTPError:
        return False  # cannot tell: keep the server's own words
    return answer.status_code == 404


# The SDK's API names in its advice, and the command that does the same from a shell.
_COMMAND_FOR = {
    "status": "status",
    "detect": "detect",
    "plan": "plan",
    "migrate": "migrate",
    "cancel": "cancel",
    "summary": "verify",
    "verify": "verify",
    "pending_conflicts": "conflicts",
    "resolve_conflict": "resolve",
    "resolve_conflicts": "resolve",
    "complete": "migrate",
}
_API_CALL = re.compile(r"\b(?:(call|use) )?(\w+)\(\)")


def _for_the_command_line(message: str) -> str:
    """``message`` with the SDK's Python calls replaced by the commands that do the same.

    >>> _for_the_command_line("call status() and resume; see pending_conflicts()")
    'run `status` and resume; see `conflicts`'
    """

    def command(match: re.Match[str]) -> str:
        verb, name = match.group(1), match.group(2)
        name = _COMMAND_FOR.get(name, name.replace("_", "-"))
        return f"{'run ' if verb else ''}`{name}`"

    return _API_CALL.sub(command, message)


def _show_waits(args: argparse.Namespace) -> Callable[[], None]:
    """Print a line on stderr for each wait before a retry (the server unreachable or
    busy), instead of silence; returns the function that stops it."""
    if args.verbose:
        return lambda: None  # the log lines, all of them, already go to stderr
    handler = _WaitLines(_server_url(args))
    transport_log = logging.getLogger("sdk._transport.http")
    # Its warnings are these waits: shown here as plain lines, not as log records.
    saved = transport_log.level, transport_log.propagate
    transport_log.setLevel(logging.WARNING)
    transport_log.propagate = False
    transport_log.addHandler(handler)

    def stop() -> None:
        transport_log.removeHandler(handler)
        transport_log.level, transport_log.propagate = saved

    return stop


class _WaitLines(logging.Handler):
    """The transport logs each retry as a warning; a person sees it as one line."""

    def __init__(self, server: str) -> None:
        super().__init__(logging.WARNING)
        self.server = server

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            print(f"waiting for {self.server}: {message}", file=sys.stderr, flush=True)
        except Exception:  # pragma: no cover - a broken stderr must not break the command
            self.handleError(record)


def _code_for(exc: MigrationError) -> int:
    if isinstance(exc, MigrationBlockedError) and exc.reason in ("in-progress", "active-session"):
        return EXIT_PENDING
    return EXIT_PENDING if exc.retryable else EXIT_FAILED


def _print(args: argparse.Namespace, answer: Answer) -> None:
    if args.json:
        payload = {
            "command": args.command,
            "exitCode": answer.code,
            "status": _STATUS[answer.code],
            **answer.fields,
        }
        print(json.dumps(_jsonable(payload), sort_keys=False))
        return
    for line in answer.lines:
        print(line)
    error = answer.fields.get("error")
    if error:
        print(f"error: {error['message']}", file=sys.stderr)


def _camel(name: str) -> str:
    """The wire's key style for a Python field name.

    >>> _camel("resolutions_by_kind"), _camel("duration_s")
    ('resolutionsByKind', 'durationS')
    """
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _jsonable(value: Any) -> Any:
    """``value`` as JSON: the SDK's dataclasses with their fields in camelCase, as on
    the wire; the keys of dicts (collections, an item's own data) as they are."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            _camel(field.name): _jsonable(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "wire"):
        return value.wire()
    return value


# --------------------------------------------------------------------------- options


def _parser() -> argparse.ArgumentParser:
    # The common options are accepted before or after the command: the sub-parsers'
    # copies default to SUPPRESS so they only override what was given there.
    parser = argparse.ArgumentParser(
        prog="offline-migrate",
        description="Migrate an offline-first app's local store to the cloud, once.",
        epilog="exit codes: 0 done (and verified), 1 failed, 2 usage error, 3 pending "
        "(offline, waiting for conflicts to be resolved, or another process migrating), "
        "4 no store at the path",
    )
    parser.add_argument("--version", action="store_true", help="print the version")
    _common(parser, argparse.SUPPRESS, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], Answer], text: str) -> Any:
        sub = commands.add_parser(name, help=text, description=text)
        _common(sub, argparse.SUPPRESS)
        sub.set_defaults(run=run)
        return sub

    command("detect", _detect, "what the store holds, and whether the server accepts it")
    plan = command("plan", _plan, "predict new, unchanged and conflicting items; send no data")
    migrate = command("migrate", _migrate, "migrate (or continue the migration) to the end")
    command("status", _status, "how far the migration got, on the device and on the server")
    command("conflicts", _conflicts, "list the conflicts waiting for a decision")
    resolve = command("resolve", _resolve, "decide conflicts waiting for a decision")
    command("cancel", _cancel, "cancel the migration in progress; the store is untouched")
    verify = command(
        "verify", _verify, "check that the cloud holds exactly what the device holds, now"
    )
    verify.add_argument(
        "--full",
        action="store_true",
        help="recompute both checksums from every item instead of the running ones",
    )
    sync = command(
        "sync", _sync, "push local changes, pull the cloud's, and check both hold the same"
    )
    sync.add_argument(
        "--full",
        action="store_true",
        help="check with checksums recomputed from every item (slower; an audit)",
    )
    sample = command(
        "sample", _sample, "create a sample store to try the other commands on (no server)"
    )
    sample.add_argument(
        "--items", type=int, default=100, help="how many items (default: %(default)s)"
    )
    sample.add_argument(
        "--conflicts",
        action="store_true",
        help="also write cloud versions of some items (--seed-file) that conflict with them",
    )
    sample.add_argument(
        "--seed-file",
        type=Path,
        default=None,
        metavar="FILE.jsonl",
        help="with --conflicts: the file for `python -m backend_stub seed USER FILE.jsonl` "
        "(default: cloud-items.jsonl beside the store)",
    )
    for sub in (plan, migrate, sync):
        sub.add_argument(
            "--strategy",
            action="append",
            default=[],
            metavar="[COLLECTION=]STRATEGY",
            help=f"conflict strategy, for all collections or one ({', '.join(_STRATEGIES)}); "
            "repeat for several collections",
        )
    migrate.add_argument("--batch-size", type=int, default=None, help="items per batch, at most")
    migrate.add_argument(
        "--batch-bytes",
        type=int,
        default=None,
        help="bytes per batch body, at most (the unit a dropped link resends)",
    )
    migrate.add_argument(
        "--parallel", type=int, default=None, help="batches uploaded at the same time"
    )
    migrate.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="a live bar (needs the `cli` extra), plain lines, or nothing (default: a bar "
        "on a terminal, lines otherwise)",
    )
    resolve.add_argument("conflict_id", nargs="?", help="the conflict (see `conflicts`)")
    resolve.add_argument(
        "choice",
        nargs="?",
        choices=("local", "server", "merged"),
        help="the version to keep: this device's, the cloud's, or merged (give --data)",
    )
    resolve.add_argument("--data", help="the merged item's data, a JSON object (for merged)")
    resolve.add_argument(
        "--all", choices=("local", "server"), help="decide every waiting conflict the same way"
    )
    return parser


def _common(parser: argparse.ArgumentParser, default: Any, *, top: bool = False) -> None:
    def d(value: Any) -> Any:
        return value if top else default

    parser.add_argument(
        "--server", default=d(None), help="the migration server's URL (env MIGRATION_SERVER)"
    )
    parser.add_argument("--user", default=d(None), help="the user's id (env MIGRATION_USER)")
    parser.add_argument(
        "--token", default=d(None), help="the user's bearer token (env MIGRATION_TOKEN)"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--store", default=d(None), type=Path, help="the store's file")
    where.add_argument("--app", default=d(None), help="the app's name: its default store")
    parser.add_argument(
        "--retry-for",
        type=float,
        default=d(None),
        metavar="SECONDS",
        help="how long one request keeps retrying while the server is unreachable or "
        "busy (default: 8 attempts within 2 minutes; 0: no retry)",
    )
    parser.add_argument(
        "--json", action="store_true", default=d(False), help="print one JSON object"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=d(False), help="log what happens"
    )


def _store_path(args: argparse.Namespace) -> Path:
    if args.store is not None and args.app is not None:
        raise UsageError("give --store or --app, not both")
    if args.store is not None:
        return Path(args.store).expanduser()
    if args.app is not None:
        return default_store_path(args.app)
    raise UsageError("say which store: --store PATH, or --app NAME for the app's default one")


def _credentials(args: argparse.Namespace, *, required: bool) -> tuple[str, str, str] | None:
    given = {
        "--server": args.server or os.environ.get("MIGRATION_SERVER"),
        "--user": args.user or os.environ.get("MIGRATION_USER"),
        "--token": args.token or os.environ.get("MIGRATION_TOKEN"),
    }
    missing = [name for name, value in given.items() if not value]
    if not missing:
        return given["--server"], given["--user"], given["--token"]  # type: ignore[return-value]
    if required or len(missing) < 3:
        env = {"--server": "MIGRATION_SERVER", "--user": "MIGRATION_USER"}
        names = ", ".join(f"{m} (or {env.get(m, 'MIGRATION_TOKEN')})" for m in missing)
        raise UsageError(f"missing {names}")
    return None


def _policy(specs: Sequence[str]) -> ConflictPolicy:
    default = "server_wins"
    per_collection: dict[str, str] = {}
    for spec in specs:
        collection, _, strategy = spec.rpartition("=")
        if strategy not in _STRATEGIES:
            raise UsageError(
                f"--strategy {spec!r}: the strategy must be one of {', '.join(_STRATEGIES)}"
            )
        if collection:
            per_collection[collection] = strategy
        else:
            default = strategy
    return ConflictPolicy(default=default, per_collection=per_collection)  # type: ignore[arg-type]


def _client(
    args: argparse.Namespace,
    options: MigrationOptions | None = None,
    *,
    creates: bool = False,
    **kw: Any,
) -> MigrationClient:
    credentials = _credentials(args, required=True)
    assert credentials is not None
    server, user, token = credentials
    path = _store_path(args)
    _refuse_unusable(path, creates=creates)
    retry = None if args.retry_for is None else RetryPolicy(timeout=args.retry_for)
    return MigrationClient(
        server=server,
        user_id=user,
        token=token,
        store_path=path,
        options=options,
        retry=retry,
        **kw,
    )


def _refuse_unusable(path: Path, *, creates: bool = False) -> None:
    """Refuse a path that holds no store (unless the command ``creates`` it: ``sync`` on a
    new device), or not ours, before the client puts its journal and lock beside it: a
    refusal leaves no trace."""
    local = inspect_store(path, count=False)
    missing = local.state is LocalState.NO_STORE and not journal_path_for(path).exists()
    if missing and not (creates and path.parent.is_dir()):
        raise StoreNotFoundError(_no_store(path), path=str(path))
    if _unusable(local):
        local.raise_for_state()


def _no_store(path: Path) -> str:
    return (
        f"no store at {path}, so nothing was done; check --store (or --app): the app "
        "creates its store when it first saves something on this device"
    )


# --------------------------------------------------------------------------- commands


def _local_fields(local: LocalDetection) -> dict[str, Any]:
    return {
        "state": local.state.value,
        "reason": local.reason,
        "path": str(local.path),
        "itemCount": local.item_count,
        "collections": dict(local.counts),
        "deletions": local.tombstones,
        "dataVersion": local.data_version,
        "sizeBytes": local.size_bytes,
    }


def _unusable(local: LocalDetection) -> bool:
    return local.state in (LocalState.FOREIGN, LocalState.CORRUPT, LocalState.UNSUPPORTED_VERSION)


def _detect(args: argparse.Namespace) -> Answer:
    path = _store_path(args)
    local = detect_local(path)
    credentials = _credentials(args, required=False)
    lines = [f"store    {path}", f"state    {local.state.value}: {local.reason}"]
    if local.item_count:
        lines.append(f"items    {local.item_count:,} ({counts(local.counts)})")
    fields: dict[str, Any] = {"local": _local_fields(local), "server": None}
    code = EXIT_FAILED if _unusable(local) else EXIT_DONE
    if local.state is LocalState.NO_STORE:
        code = EXIT_NO_STORE
    if credentials is not None and local.state is LocalState.READY:
        with _client(args) as client:
            try:
                found = client.detect()
            except MigrationError as exc:
                code, fields["error"] = _error_fields(args, exc)
                return Answer(code, fields, lines)
        server = found.server
        assert server is not None
        fields["server"] = server.wire()
        verdict = "yes" if server.can_migrate else f"no: {server.reason}"
        lines.append(f"server   can migrate: {verdict}")
        if server.active_session_id:
            lines.append(
                f"         a migration is in progress (session {server.active_session_id})"
            )
    elif credentials is None and local.state is LocalState.READY:
        lines.append("server   not asked (give --server, --user and --token to ask)")
    return Answer(code, fields, lines)


def _plan(args: argparse.Namespace) -> Answer:
    options = MigrationOptions(conflicts=_policy(args.strategy))
    with _client(args, options) as client:
        plan = client.plan()
    lines = [
        f"{plan.item_count:,} items: {plan.new_items:,} new, {plan.unchanged_items:,} already "
        f"in the cloud, {plan.conflicts:,} in conflict"
    ]
    for name, part in sorted(plan.collections.items()):
        lines.append(
            f"  {name:<20} {part.items:>7,} items  {part.new:>7,} new  {part.unchanged:>7,} "
            f"unchanged  {part.conflicts:>5,} conflicts  ({counts(part.choices)})"
        )
    if plan.conflicts:
        lines.append(f"conflicts would be resolved by: {counts(plan.resolutions_by_kind)}")
    if plan.pending_conflicts:
        lines.append(f"{plan.pending_conflicts:,} would wait for a decision (see `resolve`)")
    if plan.flagged:
        lines.append(f"{len(plan.flagged):,} timestamps could not be trusted (see --json)")
    fields = {
        "itemCount": plan.item_count,
        "newItems": plan.new_items,
        "unchangedItems": plan.unchanged_items,
        "conflicts": plan.conflicts,
        "pendingConflicts": plan.pending_conflicts,
        "resolutionsByKind": plan.resolutions_by_kind,
        "plan": plan,
    }
    return Answer(EXIT_DONE, fields, lines)


def _migrate(args: argparse.Namespace) -> Answer:
    values = {
        "batch_size": args.batch_size,
        "batch_bytes": args.batch_bytes,
        "max_in_flight": args.parallel,
    }
    options = MigrationOptions(
        conflicts=_policy(args.strategy), **{k: v for k, v in values.items() if v is not None}
    )
    display = open_progress("none" if args.json else args.progress)
    with _client(args, options, on_progress=display) as client, display:
        result = _run_stoppable(lambda stop: client.migrate(stop=stop))
    return _migrated(result)


def _run_stoppable(work: Callable[[threading.Event], _R]) -> _R:
    """Run ``work`` in a thread; Ctrl-C (or SIGTERM) stops it at a safe point."""
    stop = threading.Event()
    finished = threading.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work(stop)
        except BaseException as exc:
            box["error"] = exc
        finally:
            finished.set()

    # Waiting on an event, not on join(): a join interrupted by Ctrl-C can leave the
    # thread looking finished while it still runs.
    thread = threading.Thread(target=target, name="sdk-cli-migrate", daemon=True)
    previous = _on_sigterm()
    thread.start()
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        stop.set()
        print("\nstopping at a safe point (Ctrl-C again to quit at once)...", file=sys.stderr)
        finished.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if "error" in box:
        raise box["error"]
    result: _R = box["result"]
    return result


def _on_sigterm() -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: object) -> NoReturn:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _migrated(result: MigrationResult) -> Answer:
    fields = {"outcome": result.outcome.value, "verified": result.verified, "result": result}
    outcome = result.outcome
    if outcome is MigrationOutcome.NOTHING_TO_MIGRATE:
        return Answer(EXIT_DONE, fields, ["nothing to migrate: the store holds no items"])
    if outcome is MigrationOutcome.ALREADY_MIGRATED:
        return Answer(
            EXIT_DONE,
            fields,
            [f"already migrated (session {result.session_id}) and verified"],
        )
    if outcome is MigrationOutcome.STOPPED:
        return Answer(
            EXIT_PENDING, fields, ["stopped at a safe point; run the same command to continue"]
        )
    if outcome is MigrationOutcome.AWAITING_RESOLUTION:
        return Answer(
            EXIT_PENDING,
            fields,
            [
                f"{result.pending_conflicts:,} conflict(s) wait for a decision: list them with "
                "`conflicts`, decide with `resolve`, then run `migrate` again"
            ],
        )
    lines = [
        f"migrated {result.item_count:,} items, verified: {'yes' if result.verified else 'NO'}",
        f"  new {result.new_items or 0:,}, already in the cloud {result.unchanged_items or 0:,}, "
        f"in conflict {result.conflicts:,}",
    ]
    if result.resolutions_by_kind:
        lines.append(f"  conflicts resolved by: {counts(result.resolutions_by_kind)}")
    if result.collections:
        lines.append(f"  collections: {counts(result.collections)}")
    if result.flagged:
        lines.append(f"  {len(result.flagged)} timestamp(s) distrusted: decided by the fallback")
    lines.append(
        f"  session {result.session_id}, {result.batches_uploaded} batches sent"
        f"{' (resumed)' if result.resumed else ''}, {result.duration_s:.1f} s"
    )
    lines.append(f"  checksum {result.cloud_checksum}")
    if result.sync is not None:
        lines.extend(_sync_lines(result.sync))
    if result.sync is not None and not result.verified and result.sync.pending_changes:
        return Answer(EXIT_PENDING, fields, lines)  # the app wrote meanwhile: sync again
    return Answer(EXIT_DONE if result.verified else EXIT_FAILED, fields, lines)


def _sync(args: argparse.Namespace) -> Answer:
    options = MigrationOptions(conflicts=_policy(args.strategy))
    with _client(args, options, creates=True) as client:
        result = _run_stoppable(lambda stop: client.sync(stop=stop, full=args.full))
    fields = {"verified": result.verified, "result": result}
    if result.migration is not None and result.migration.outcome is not MigrationOutcome.COMPLETED:
        answer = _migrated(result.migration)  # the first sync is the migration: it waits
        return Answer(answer.code, {**fields, **answer.fields}, answer.lines)
    lines = _sync_lines(result)
    if result.stopped:
        lines.append("stopped at a safe point; run the same command to continue")
    if result.pending_conflicts:
        lines.append("decide the waiting conflicts with `conflicts` and `resolve`, then sync")
    code = EXIT_DONE if result.verified else EXIT_PENDING
    return Answer(code, fields, lines)


def _sync_lines(result: SyncResult) -> list[str]:
    lines = [
        f"synced: {result.pushed:,} change(s) sent, {result.pulled:,} received; "
        f"in step with the cloud: {'yes' if result.verified else 'not yet'}"
    ]
    if result.resolutions_by_kind:
        lines.append(f"  conflicts decided by: {counts(result.resolutions_by_kind)}")
    if result.pending_changes:
        lines.append(f"  {result.pending_changes:,} local change(s) still wait to be sent")
    if result.pending_conflicts:
        lines.append(f"  {result.pending_conflicts:,} conflict(s) wait for a decision")
    lines.append(f"  cloud at seq {result.seq}, checksum {result.cloud_checksum}")
    return lines


def _status(args: argparse.Namespace) -> Answer:
    from ._auto import journal_progress

    path = _store_path(args)
    local = detect_local(path)
    progress = journal_progress(path)
    busy = False
    if local.state is LocalState.READY:
        lock = MigrationLock(lock_path_for(path))
        busy = not lock.try_acquire()
        lock.release()
    lines = [f"store    {path}: {local.state.value}"]
    fields: dict[str, Any] = {"local": _local_fields(local), "progress": progress, "busy": busy}
    if local.migration is not None:
        lines.append(f"migrated in session {local.migration.session_id}")
    if local.synced:
        with LocalStore(path, create=False) as store:
            mine = sync_status(store, None)
        fields["sync"] = mine
        when = (
            "never"
            if mine.last_sync_at is None
            else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mine.last_sync_at / 1000))
        )
        lines.append(
            f"sync     {mine.pending_changes:,} local change(s) to send, "
            f"{mine.pending_conflicts:,} conflict(s) waiting; last in step: {when}"
        )
    if progress is not None:
        lines.append(
            f"journal  {progress.phase.value}: {progress.items_done:,}/{progress.items_total:,} "
            f"items{' (a process is migrating it now)' if busy else ''}"
        )
    if _unusable(local):
        code = EXIT_FAILED
        lines.append(local.reason)
    elif local.state is LocalState.READY:
        code = EXIT_PENDING
        if progress is None:
            lines.append("not migrated yet: run `migrate`")
    elif local.state is LocalState.NO_STORE and progress is None:
        code = EXIT_NO_STORE
        lines.append(_no_store(path))
    else:
        code = EXIT_DONE
    credentials = _credentials(args, required=False)
    ask = local.state is not LocalState.NO_STORE and not _unusable(local)
    if credentials is not None and ask:
        with _client(args) as client:
            try:
                status = client.status()
            except NotFoundError as exc:
                if _wrong_server(args, exc):
                    code, fields["error"] = _error_fields(args, exc)
                    return Answer(code, fields, lines)
                status = None  # the server knows no migration of this user
            except MigrationError as exc:
                error_code, fields["error"] = _error_fields(args, exc)
                return Answer(max(code, error_code), fields, lines)
        if status is not None:
            fields["server"] = status.wire()
            lines.append(
                f"server   session {status.session_id}: {status.status.value}, "
                f"{status.progress:.0%}, step {status.current_step}, "
                f"{len(status.received_batches)}/{status.batch_count} batches, "
                f"{status.unresolved_conflicts} unresolved conflicts"
            )
            lines.extend(f"         error: {e}" for e in status.errors)
        if "sync" in fields:
            with _client(args) as client:
                try:
                    both = client.verify()
                except MigrationError as exc:
                    fields["syncError"] = {"type": type(exc).__name__, "message": str(exc)}
                    return Answer(code, fields, lines)
            fields["sync"] = both
            lines.append(
                f"cloud    {both.changes_to_pull or 0:,} change(s) to receive; in step now: "
                f"{'yes' if both.verified else 'no'}"
            )
    return Answer(code, fields, lines)


def _conflicts(args: argparse.Namespace) -> Answer:
    with _client(args) as client:
        waiting = client.pending_conflicts()
    lines = [f"{len(waiting)} conflict(s) wait for a decision"]
    for conflict in waiting:
        lines.append(f"{conflict.conflict_id}  {conflict.collection}/{conflict.key}")
        lines.append(f"    this device: {describe_item(conflict.local)}")
        lines.append(f"    the cloud:   {describe_item(conflict.server)}")
    if waiting:
        lines.append("decide with: resolve CONFLICT_ID local|server, or resolve --all local")
    return Answer(EXIT_DONE, {"conflicts": waiting}, lines)


def _resolve(args: argparse.Namespace) -> Answer:
    if (args.all is None) == (args.conflict_id is None):
        raise UsageError("give CONFLICT_ID and CHOICE, or --all local|server")
    if args.all is None and args.choice is None:
        raise UsageError("say which version to keep: local, server or merged")
    data = None
    if args.data is not None:
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            raise UsageError(f"--data is not valid JSON ({exc})") from exc
    with _client(args) as client:
        if args.all is not None:
            decided = [c.conflict_id for c in client.pending_conflicts()]
            for conflict_id in decided:
                client.resolve_conflict(conflict_id, args.all)
        else:
            client.resolve_conflict(args.conflict_id, args.choice, data)
            decided = [args.conflict_id]
        remaining = len(client.pending_conflicts())
    lines = [f"decided {len(decided)} conflict(s); {remaining} still wait"]
    if not remaining:
        lines.append("run `migrate` to apply the decisions and finish")
    return Answer(EXIT_DONE, {"decided": decided, "remaining": remaining}, lines)


_SAMPLE_CONFLICTS = 2
_SAMPLE_TIME = 1_700_000_000_000  # fixed, so two samples of the same size are the same
_DAY = 86_400_000


def _sample(args: argparse.Namespace) -> Answer:
    """A learning app's store: lesson progress, flash cards, preferences and a deletion;
    with ``--conflicts``, the cloud's newer versions of the first items, for ``seed``."""
    path = _store_path(args)
    if args.items < 1:
        raise UsageError(f"--items must be 1 or more, got {args.items}")
    if args.seed_file is not None and not args.conflicts:
        raise UsageError("--seed-file goes with --conflicts")
    seed = args.seed_file or path.parent / "cloud-items.jsonl"
    written = [path, seed] if args.conflicts else [path]
    for target in written:
        if target.exists() or journal_path_for(target).exists():
            message = f"{target} already exists; sample never overwrites: remove it or pick another"
            return _failure(EXIT_FAILED, FileExistsError(message), message)
        if not target.parent.is_dir():
            message = f"no folder {target.parent} to put {target.name} in"
            return _failure(EXIT_FAILED, FileNotFoundError(message), message)
    collections = ("lesson_progress", "flashcards", "lesson_progress")
    items = [
        {
            "collection": collections[i % 3],
            "key": f"item-{i:04d}",
            "data": {"score": i % 101, "streak": i % 7},
            "updatedAt": _SAMPLE_TIME + i,
        }
        for i in range(args.items - 1)
    ]
    theme = {"value": "dark"}
    items.append(
        {"collection": "preferences", "key": "theme", "data": theme, "updatedAt": _SAMPLE_TIME}
    )
    with LocalStore(path) as store:
        store.put_many(items)
        store.delete("lesson_progress", "lesson-0", updated_at=_SAMPLE_TIME)  # migrates too
    lines = [f"wrote a sample store: {path} ({len(items)} items and 1 deletion)"]
    fields: dict[str, Any] = {"store": str(path), "items": len(items), "seedFile": None}
    if args.conflicts:
        theirs = [
            dict(item, data={"score": 100, "from": "a tablet"}, updatedAt=_SAMPLE_TIME + _DAY)
            | {"deleted": False}  # the seed command takes whole wire items
            for item in items[:_SAMPLE_CONFLICTS]
        ]
        with seed.open("x", encoding="utf-8") as out:
            out.writelines(json.dumps(item, sort_keys=True) + "\n" for item in theirs)
        fields.update(seedFile=str(seed), conflicts=len(theirs))
        lines.append(
            f"wrote {len(theirs)} cloud versions of its items to {seed}: put them in the "
            f"cloud with `python -m backend_stub seed USER {seed}`, and `migrate "
            f"--strategy manual` meets {len(theirs)} conflicts"
        )
    return Answer(EXIT_DONE, fields, lines)


def _cancel(args: argparse.Namespace) -> Answer:
    with _client(args) as client:
        cancelled = client.cancel()
    line = "cancelled; the store is untouched" if cancelled else "no migration to cancel"
    return Answer(EXIT_DONE, {"cancelled": cancelled}, [line])


def _sync_known(path: Path) -> bool:
    with LocalStore(path, create=False) as store:
        return sync_status(store, None).synced_seq is not None


def _verify_sync(
    args: argparse.Namespace, path: Path, local: LocalDetection, fields: dict[str, Any]
) -> Answer:
    with _client(args) as client:
        status = client.verify(full=args.full)
    fields.update(verified=status.verified, status=status)
    how = "recomputed from every item" if status.full else "running"
    if status.verified:
        return Answer(
            EXIT_DONE,
            fields,
            [
                f"verified: the cloud holds exactly the {status.local_item_count:,} items of "
                "this device",
                f"  checksum ({how}) {status.local_checksum}",
            ],
        )
    waiting = []
    if status.pending_changes:
        waiting.append(f"{status.pending_changes:,} local change(s) not sent yet")
    if status.changes_to_pull:
        waiting.append(f"{status.changes_to_pull:,} cloud change(s) not received yet")
    if status.pending_conflicts:
        waiting.append(f"{status.pending_conflicts:,} conflict(s) wait for a decision")
    if status.attachments_missing:
        waiting.append(f"{status.attachments_missing:,} attachment(s) not in the cloud yet")
    if waiting:
        return Answer(EXIT_PENDING, fields, [f"not in step: {'; '.join(waiting)}: run `sync`"])
    raise VerificationError(
        f"the device holds {status.local_item_count:,} items with checksum "
        f"{status.local_checksum} ({how}) and the cloud {status.cloud_item_count:,} with "
        f"{status.cloud_checksum}, though nothing waits either way; run `verify --full`, "
        "then `sync`, and contact support if they still differ"
    )


def _verify(args: argparse.Namespace) -> Answer:
    path = _store_path(args)
    local = detect_local(path)
    fields: dict[str, Any] = {"local": _local_fields(local), "verified": False}
    if local.state is LocalState.NO_STORE:
        raise StoreNotFoundError(_no_store(path), path=str(path))
    if local.state is LocalState.EMPTY:
        return Answer(EXIT_DONE, fields, ["nothing to verify: the store holds no items"])
    local.raise_for_state()
    if _sync_known(path):
        return _verify_sync(args, path, local, fields)
    state = local.migration
    if state is None:
        journaled = journal_path_for(path).exists()
        what = "a migration is in progress" if journaled else "no migration has run"
        return Answer(EXIT_PENDING, fields, [f"not migrated yet ({what}): run `migrate`"])
    with _client(args) as client:
        summary = client.transport.summary(state.session_id)
    cloud = summary.summary
    fields.update(sessionId=state.session_id, summary=summary.wire())
    if summary.result.value != "completed" or not cloud.verified:
        raise VerificationError(
            f"the server reports session {state.session_id} as {summary.result.value} and not "
            "verified, yet this store is marked migrated; contact support with the session id"
        )
    if cloud.cloud_checksum != state.cloud_checksum:
        raise VerificationError(
            f"the cloud's checksum of session {state.session_id} ({cloud.cloud_checksum}) "
            f"differs from the one this device verified ({state.cloud_checksum}); contact "
            "support with the session id"
        )
    fields["verified"] = True
    lines = [
        f"verified: the cloud holds the {cloud.total_items:,} items this device migrated "
        f"(session {state.session_id})",
        f"  checksum {state.cloud_checksum}",
    ]
    return Answer(EXIT_DONE, fields, lines)
