"""Crash points of the server, for the tests that kill it mid-step (as the SDK's
``sdk._failpoints`` does for the client).

Off unless the environment variable ``MIGRATION_FAILPOINTS`` names one, as
``name=kill`` (SIGKILL this process at the first hit) or ``name=kill@N`` (at the N-th);
several are separated by ``;``. It is read at the first hit, so a test sets it on the
server's child process only. Off, a failpoint costs one dict lookup::

    >>> failpoint("blob.complete.assembled")  # nothing set: nothing happens
    >>> parse("blob.complete.assembled=kill@2")
    {'blob.complete.assembled': 2}
"""

from __future__ import annotations

import functools
import os
import signal
import threading

__all__ = ["ENV_VAR", "NAMES", "failpoint", "parse"]

ENV_VAR = "MIGRATION_FAILPOINTS"

NAMES = (
    "blob.chunk.stored",  # a chunk is in place; its receipt not sent yet
    "blob.complete.assembled",  # the whole content is written and hashed; not in place yet
    "blob.complete.placed",  # the content is in place; not recorded as held yet
    "commit.complete.recorded",  # aws API: the decision recorded, the job queued; no answer
    "commit.flip.before",  # aws worker: the commit's rows set aside; the flip not sent yet
    "commit.flip.after",  # aws worker: the flip landed; the roll-forward not begun
    "commit.roll.page",  # aws worker: a page rolled forward; its progress not recorded
)

_lock = threading.Lock()
_hits: dict[str, int] = {}


def parse(spec: str) -> dict[str, int]:
    """The failpoints of a ``MIGRATION_FAILPOINTS`` value: name -> the hit that kills.

    >>> parse("blob.chunk.stored=kill@3; blob.complete.placed=kill")
    {'blob.chunk.stored': 3, 'blob.complete.placed': 1}
    >>> parse("nope=kill")
    Traceback (most recent call last):
    ...
    ValueError: MIGRATION_FAILPOINTS: unknown failpoint 'nope'
    """
    rules: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, rest = part.partition("=")
        action, _, at = rest.partition("@")
        if name.strip() not in NAMES:
            raise ValueError(f"{ENV_VAR}: unknown failpoint {name.strip()!r}")
        if action.strip() != "kill":
            raise ValueError(f"{ENV_VAR}: the only action is 'kill', not {action.strip()!r}")
        rules[name.strip()] = int(at) if at.strip() else 1
    return rules


@functools.cache
def _rules() -> dict[str, int]:
    return parse(os.environ.get(ENV_VAR, ""))


def failpoint(name: str) -> None:
    """Mark a step boundary; kills the process when ``MIGRATION_FAILPOINTS`` says so.

    >>> failpoint("blob.chunk.stored")
    """
    at = _rules().get(name)
    if at is None:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] == at:
            os.kill(os.getpid(), signal.SIGKILL)
