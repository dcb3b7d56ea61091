"""Completion off the request path: the ``aws`` backend's ``complete``, and its commit job.

On the ``aws`` backend, ``POST .../complete`` runs :func:`request_commit`: it checks what
the embedded backend checks first (every batch held, no conflict left, the dataset
checksum is the manifest's), records the decision (the session goes ``committing``, a
commit record is written) and queues a ``CommitSession`` job; it answers at once with
status ``committing``. A replay answers the same until the commit finished, then the
completed result. The worker runs :func:`commit_slice` for each job: one bounded slice
of the commit (see :mod:`backend_stub.storage.aws_slices` for the steps), then it queues
the next job. ``GET /status`` shows the commit's progress.

The checksums are computed as the commit goes, never taken from the request: the
dataset checksum over the staged digests, slice after slice, checked against the
manifest before the flip; the cloud checksum over the digests of the cloud's rows as
the commit read them (the items it keeps) and of the versions it writes, in key order.
The flip is conditioned on the generation those rows were read at, so once it lands
the committed cloud holds exactly them. The flip also completes the session and
records ``MigrationCompleted``; the roll-forward that follows is invisible to readers
(they resolve through the pointer) and needs nothing that expires::

    >>> commit_message("alice", "s1")
    '{"type":"CommitSession","userId":"alice","sessionId":"s1"}'
"""

from __future__ import annotations

import logging

from backend_stub.commit_steps import STEPS, flip, fresh, restart
from backend_stub.completion import (
    _checksum_mismatch,
    _ensure_complete,
)
from backend_stub.failpoints import failpoint
from backend_stub.service import ensure_open, load_session, retrying, touch
from backend_stub.settings import Settings
from backend_stub.storage import Session, Storage
from backend_stub.storage.aws import AwsStorage
from backend_stub.storage.aws_slices import (
    COMMIT_JOB,
    commit_message,
    load_record,
    replace_record,
    save_record,
)
from sdk.contract import (
    CompleteMigrationRequest,
    CompleteMigrationResponse,
    SessionStatus,
)

__all__ = ["COMMIT_JOB", "commit_message", "commit_slice", "request_commit"]

logger = logging.getLogger(__name__)


def request_commit(
    storage: Storage,
    settings: Settings,
    user_id: str,
    session_id: str,
    request: CompleteMigrationRequest,
    *,
    now: int,
) -> CompleteMigrationResponse:
    """``POST .../complete`` on the aws backend: decide, queue the commit, answer at once.

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> request_commit(SQLiteStorage.in_memory(), Settings(), "alice", "s1",
    ...                CompleteMigrationRequest(dataset_checksum="0" * 64), now=0)
    Traceback (most recent call last):
    ...
    TypeError: request_commit needs the aws backend; the embedded one commits inline
    """
    if not isinstance(storage, AwsStorage):
        raise TypeError("request_commit needs the aws backend; the embedded one commits inline")
    aws = storage

    def attempt() -> CompleteMigrationResponse:
        session = load_session(aws, user_id, session_id)
        if session.status is SessionStatus.COMPLETED and session.result is not None:
            if request.dataset_checksum != session.result.dataset_checksum:
                raise _checksum_mismatch("this migration completed with another dataset checksum")
            return session.result
        if request.dataset_checksum != session.manifest.dataset_checksum:
            raise _checksum_mismatch(
                "the checksum differs from the manifest's: confirm with the checksum of the"
                " snapshot that was uploaded"
            )
        if session.status is SessionStatus.FAILED and (session.error or "").startswith(
            "dataset checksum"
        ):
            # The commit found it (in the worker): a replay answers what the embedded
            # backend answers at once.
            raise _checksum_mismatch(
                "the uploaded items do not add up to the manifest's dataset checksum, so the"
                " migration failed: take a new snapshot and start a new migration"
            )
        if session.status is SessionStatus.COMMITTING:
            # A job lost between the decision and the queue is sent again; a duplicate
            # job finds its slice done and stops.
            _enqueue(aws, user_id, session_id)
            return committing(session)
        ensure_open(session, now)
        _ensure_complete(aws, session)
        previous = load_record(aws, session.id)
        with aws.atomic():
            session = aws.update_session(
                touch(session, settings, now, status=SessionStatus.COMMITTING)
            )
        replace_record(aws, session.id, fresh(aws, session, previous))
        _enqueue(aws, user_id, session_id)
        failpoint("commit.complete.recorded")
        logger.info("session %s: commit decided and queued", session.id)
        return committing(session)

    return retrying(attempt)


def committing(session: Session) -> CompleteMigrationResponse:
    """The answer while the commit runs (no cloud checksum yet: it is read back later)."""
    return CompleteMigrationResponse(
        session_id=session.id,
        status=SessionStatus.COMMITTING,
        item_count=session.manifest.item_count,
        applied_count=0,
        dataset_checksum=session.manifest.dataset_checksum,
        cloud_checksum="",
        completed_at=0,
    )


def _enqueue(storage: AwsStorage, user_id: str, session_id: str) -> None:
    storage.resources.sqs.send_message(
        QueueUrl=storage.resources.queue_url, MessageBody=commit_message(user_id, session_id)
    )


def commit_slice(
    storage: AwsStorage, settings: Settings, user_id: str, session_id: str, *, now: int
) -> bool:
    """Run the next slice of a session's commit; ``True`` while more slices remain.

    A slice that lost to another one (a duplicate job) changes nothing and returns
    ``False``: the job that won goes on.

    >>> commit_slice(storage, settings, "alice", session_id, now=0)  # doctest: +SKIP
    True
    """
    session = load_session(storage, user_id, session_id)
    record = load_record(storage, session_id)
    if record is None:
        if session.status is not SessionStatus.COMMITTING:
            return False
        record = fresh(storage, session, None)
        if not save_record(storage, session_id, record, None):
            return True
    if record.step == "done":
        return False
    if record.step in ("aside", "snapshot", "flip") and session.status is not (
        SessionStatus.COMMITTING
    ):
        return False  # the decision was withdrawn (the cloud changed): nothing to commit
    if record.unhashed:  # begun before an upgrade: its hashes miss the items set aside
        return save_record(storage, session_id, restart(storage, session, record), record.part)
    limit = settings.aws.commit_slice
    if record.step == "flip":
        return flip(storage, session, record, now)
    following = STEPS[record.step](storage, settings, session, record, limit, now)
    if not save_record(storage, session_id, following, record.part):
        return False
    return following.step != "done"
