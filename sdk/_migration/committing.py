"""Waiting for a server that commits off the request path.

A server may answer ``complete`` with status ``committing`` (the AWS backend commits in
its worker, slice after slice); the SDK then waits as it waits for batch processing:
it polls ``status`` with the same backoff, reports the commit's progress as the
``completing`` phase, and asks ``complete`` again once the status moved on: a completed
session answers its stored result; a session the cloud changed under answers why (409,
handled by the caller as any answer of ``complete``)::

    >>> _COMMIT_TIMEOUT
    3600.0
"""

from __future__ import annotations

import time

from .._errors import ServerError
from .._events import Progress, ProgressPhase
from .._stopping import stoppable_sleep
from .._wire import models as c
from .._wire.canonical import SessionStatus
from .run import Run, session_status

__all__ = ["await_commit"]

#: How long one call waits for a committing server; the next call resumes the wait.
_COMMIT_TIMEOUT = 3600.0


def await_commit(
    run: Run,
    session_id: str,
    answer: c.CompleteMigrationResponse,
    request: c.CompleteMigrationRequest,
    item_count: int,
) -> c.CompleteMigrationResponse:
    """``answer``, or once the server finished committing, its completed answer."""
    deadline = time.monotonic() + _COMMIT_TIMEOUT
    delay = 0.05
    while answer.status is SessionStatus.COMMITTING:
        status = session_status(run, session_id)
        done = min(item_count, int(status.progress * item_count))
        run.hooks.progress(Progress(ProgressPhase.COMPLETING, done, item_count))
        if status.status is not SessionStatus.COMMITTING:
            answer = run.transport.complete(session_id, request)
            continue
        if time.monotonic() + delay > deadline:
            raise ServerError(
                f"the server was still committing session {session_id} after"
                f" {_COMMIT_TIMEOUT:.0f} s; run the migration again later: it resumes here",
                status=503,
            )
        if run.stop is not None:
            stoppable_sleep(run.stop)(delay)
        else:
            time.sleep(delay)
        delay = min(delay * 2, 2.0)
    return answer
