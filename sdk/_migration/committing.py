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

from .._events import Progress, ProgressPhase
from .._wire import models as c
from .._wire.canonical import SessionStatus
from .run import Run, poll_status

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

    def report(status: c.GetMigrationStatusResponse) -> None:
        done = min(item_count, int(status.progress * item_count))
        run.hooks.progress(Progress(ProgressPhase.COMPLETING, done, item_count))

    while answer.status is SessionStatus.COMMITTING:
        poll_status(
            run,
            session_id,
            while_state=SessionStatus.COMMITTING,
            doing="committing",
            timeout=_COMMIT_TIMEOUT,
            on_status=report,
        )
        answer = run.transport.complete(session_id, request)
    return answer
