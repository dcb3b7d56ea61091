"""Named failpoints: the step boundaries where a test can crash or fail the SDK.

The engine calls :func:`failpoint` at every step boundary of a migration (the names are
in :data:`NAMES`). Off, a failpoint is a check of one empty dict. A test turns one on with
:func:`enable` (in-process), or for a child process through the environment variable
``OFFLINE_MIGRATE_FAILPOINTS``, which is read when a migration starts (never at import)::

    OFFLINE_MIGRATE_FAILPOINTS="batch.sent=kill@3"      # SIGKILL at the 3rd batch sent
    OFFLINE_MIGRATE_FAILPOINTS="*=kill@17"              # at the 17th boundary, any name

Actions: ``kill`` (SIGKILL this very process, as a power cut or the OS would),
``stop`` (SIGSTOP it: frozen at that very step, as a suspended laptop would be, until
a test sends SIGCONT; ``os.waitpid(pid, os.WUNTRACED)`` returns once it is frozen),
``raise`` (:class:`FailpointError`, which no SDK code catches), or in-process any
callable. ``@N`` fires at the N-th hit only (default: the first), ``@N+`` at every hit
from the N-th on::

    >>> reset()
    >>> enable("complete.before", "raise")
    >>> failpoint("complete.after")  # another name: nothing happens
    >>> failpoint("complete.before")
    Traceback (most recent call last):
    ...
    sdk._failpoints.FailpointError: failpoint complete.before (hit 1)
    >>> failpoint("complete.before")  # fired once; now inert
    >>> reset()
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "BLOB_NAMES",
    "ENV_VAR",
    "MIGRATION_NAMES",
    "NAMES",
    "SYNC_NAMES",
    "FailpointError",
    "configure_from_env",
    "enable",
    "failpoint",
    "hits",
    "reset",
]

#: The environment variable :func:`configure_from_env` reads.
ENV_VAR = "OFFLINE_MIGRATE_FAILPOINTS"

#: The migration's failpoints, in the order a migration meets them.
MIGRATION_NAMES = (
    "snapshot.during",  # the store is copied into the partial snapshot file; not checked
    "snapshot.taken",  # snapshot renamed into place; its checksum not journaled yet
    "start.before",  # the snapshot is journaled; `start` not sent yet
    "start.sent",  # `start` answered; the session id not journaled yet
    "batch.sent",  # a batch was sent and answered; the answer not read yet
    "batch.answered",  # batch receipts read; not journaled yet
    "journal.write",  # inside a journal transaction, before its commit
    "resolve.before",  # resolutions decided and applied locally; not posted yet
    "resolve.after",  # resolutions posted; not journaled as posted yet
    "complete.before",  # everything resolved; `complete` not sent yet
    "complete.after",  # `complete` answered; the cloud checksum not journaled yet
    "cleanup.before",  # verified and marked migrated; snapshot and journal not dropped yet
)
#: The sync's failpoints, in the order a sync meets them.
SYNC_NAMES = (
    "sync.push.journaled",  # a push is in the store's outbox; not sent yet
    "sync.push.answered",  # the server applied a push; its answer not written locally yet
    "sync.pull.answered",  # a page of changes arrived; not written into the store yet
    "sync.pull.applied",  # a page and its cursor are written; the next page not asked yet
)
#: The attachments' failpoints (met before a migration's ``complete``, a sync's push,
#: and in a pull that fetches attachments).
BLOB_NAMES = (
    "blob.chunk.sending",  # part of a chunk of an attachment is on the wire, not the rest
    "blob.chunk.sent",  # a chunk of an attachment was sent and answered
    "blob.chunks.sent",  # every chunk of one attachment is sent; `complete` not sent yet
    "blob.chunk.fetched",  # a part of an attachment was downloaded and stored
)
#: Every failpoint the SDK has.
NAMES = MIGRATION_NAMES + SYNC_NAMES + BLOB_NAMES

Action = Callable[[], None]


class FailpointError(Exception):
    """Raised by a failpoint whose action is ``raise``; the SDK never catches it.

    >>> str(FailpointError("failpoint x (hit 1)"))
    'failpoint x (hit 1)'
    """


@dataclass
class _Rule:
    action: str | Action
    at: int  # the hit that fires it, 1-based
    seen: int = 0
    and_after: bool = False  # every hit from `at` on


_lock = threading.Lock()
_rules: dict[str, _Rule] = {}
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Mark a step boundary; does something only when a test enabled ``name`` (or ``*``).

    >>> failpoint("start.before")
    """
    if not _rules:
        return
    _trigger(name)


def _trigger(name: str) -> None:
    fire: list[tuple[str, str | Action, int]] = []
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        for key in (name, "*"):
            rule = _rules.get(key)
            if rule is None:
                continue
            rule.seen += 1
            if rule.seen == rule.at or (rule.and_after and rule.seen > rule.at):
                fire.append((key, rule.action, rule.seen))
    for _key, action, seen in fire:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        if action == "raise":
            raise FailpointError(f"failpoint {name} (hit {seen})")
        if callable(action):
            action()


def enable(
    name: str, action: str | Action = "kill", *, at: int = 1, and_after: bool = False
) -> None:
    """Fire ``action`` at the ``at``-th time ``name`` is reached (``*``: any name), and
    with ``and_after`` at every time after it too.

    >>> enable("nope", "raise")
    Traceback (most recent call last):
    ...
    ValueError: unknown failpoint 'nope'; known: snapshot.during, snapshot.taken, ...
    """
    if name != "*" and name not in NAMES:
        known = ", ".join(NAMES[:2])
        raise ValueError(f"unknown failpoint {name!r}; known: {known}, ...")
    if not callable(action) and action not in ("kill", "stop", "raise"):
        raise ValueError(
            f"a failpoint action is 'kill', 'stop', 'raise' or a callable, not {action!r}"
        )
    if at < 1:
        raise ValueError(f"at must be >= 1, got {at}")
    with _lock:
        _rules[name] = _Rule(action, at, and_after=and_after)


def reset() -> None:
    """Turn every failpoint off and forget the hit counts.

    >>> reset(); hits()
    {}
    """
    with _lock:
        _rules.clear()
        _hits.clear()


def hits() -> dict[str, int]:
    """How often each failpoint was reached since :func:`reset`, while any was enabled.

    >>> reset(); enable("complete.after", "raise", at=5); failpoint("batch.sent"); hits()
    {'batch.sent': 1}
    >>> reset()
    """
    with _lock:
        return dict(_hits)


def configure_from_env(environ: Mapping[str, str] | None = None) -> None:
    """Enable the failpoints ``OFFLINE_MIGRATE_FAILPOINTS`` lists (``name=action[@n[+]]``,
    separated by ``;``); nothing when it is unset. Called when a migration starts.

    >>> configure_from_env({ENV_VAR: "resolve.after=raise@2"}); failpoint("resolve.after")
    >>> failpoint("resolve.after")
    Traceback (most recent call last):
    ...
    sdk._failpoints.FailpointError: failpoint resolve.after (hit 2)
    >>> reset()
    """
    spec = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, rest = part.partition("=")
        action, _, at = rest.partition("@")
        if not sep:
            raise ValueError(f"{ENV_VAR}: {part!r} is not name=action[@n[+]]")
        at = at.strip()
        every = at.endswith("+")
        at = at.removesuffix("+")
        enable(name.strip(), action.strip(), at=int(at) if at else 1, and_after=every)
