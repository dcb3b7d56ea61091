"""The record and the storage steps of a migration's commit in slices (``aws`` backend).

A completion on AWS does not commit inside ``POST .../complete``: the request records
the decision and queues a job; the worker (:mod:`backend_stub.committing`) then runs the
commit one slice per message, each slice bounded by ``AwsSettings.commit_slice`` items.
What a slice did is recorded in the session's commit record (``SESSION#{id}`` /
``COMMIT``), a small row updated only if its ``part`` is still the one the slice
started from, so a duplicate or late delivery of the same job changes nothing, and a
crash anywhere resumes from the last recorded slice. Every write a slice makes before
that record moves is idempotent (set-aside rows keyed by the commit's ``tx``, snapshot
parts keyed by their number, conditional copies). What the flip needs of the whole
commit (the dataset and cloud checksums, the counts) travels in the record, slice by
slice, so that no job reads more than its slice.

The steps, in order::

    >>> STEPS
    ('sweep', 'aside', 'snapshot', 'flip', 'roll', 'cleanup', 'done')

The flip completes the session and records ``MigrationCompleted`` in the outbox; the
job publishes it when the roll-forward is done (the outbox sweep skips a user whose
commit still rolls, and queues that commit again when it stalled). ``sweep`` deletes
the set-aside rows of an abandoned try (a flip that lost to another
writer, a refused commit), so nothing orphaned waits for a TTL: set-aside rows carry
none, because after the flip the committed state depends on them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from backend_stub.storage.aws_rows import Row, aside_pk, get_s, key, n, s, session_pk
from backend_stub.storage.aws_unit import Op, expression_names
from backend_stub.storage.records import Session, VersionConflict

if TYPE_CHECKING:
    from backend_stub.storage.aws import AwsStorage

__all__ = [
    "COMMIT_JOB",
    "STEPS",
    "CommitRecord",
    "commit_message",
    "load_record",
    "record_op",
    "save_record",
]

#: ``type`` of the job that runs the next slice of a session's commit.
COMMIT_JOB = "CommitSession"
logger = logging.getLogger(__name__)

STEPS = ("sweep", "aside", "snapshot", "flip", "roll", "cleanup", "done")
COMMIT_SK = "COMMIT"
# Where each step starts on the progress scale (the bulk steps fill their share).
_SCALE = {"sweep": 0.0, "aside": 0.0, "snapshot": 0.9, "flip": 0.95, "roll": 1.0}


@dataclasses.dataclass(frozen=True)
class CommitRecord:
    """Where a sliced commit stands. ``after`` is the last item key a bulk step handled
    (``None``: none yet); ``done`` how many items that step handled; ``checksum`` and
    ``count`` the user's sync head once the commit applies; ``stale`` a try whose
    set-aside rows the ``sweep`` step deletes before ``then``.

    >>> CommitRecord("tx1", "aside", total=10, done=5).progress
    0.45
    """

    tx: str
    step: str
    part: int = 0
    after: tuple[str, str] | None = None
    done: int = 0
    total: int = 0
    generation: int = 0
    prior: int = 0
    checksum: int = 0
    count: int = 0
    new: int = 0
    unchanged: int = 0
    applied: int = 0
    stale: str | None = None
    then: str = "aside"
    outbox: tuple[str, str] | None = None
    #: The dataset and cloud checksums so far (:mod:`.running_sha256` states): the
    #: flip reads them here, not from the items. ``""``: none yet, or a record of an
    #: earlier version, which kept them in S3 (see :attr:`unhashed`).
    staged_sha: str = ""
    cloud_sha: str = ""
    #: How the conflicts of the items set aside so far were resolved, by kind.
    kinds: dict[str, int] = dataclasses.field(default_factory=dict)
    #: The snapshot's multipart upload, the parts uploaded so far, and the bytes of the
    #: item after ``after`` that they hold already (it straddles two parts).
    upload: str | None = None
    parts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    skip: int = 0
    updated_at: float = 0.0

    @property
    def progress(self) -> float:
        """A fraction from 0 to 1 for ``GET /status``."""
        start = _SCALE.get(self.step, 1.0)
        if self.step == "aside" and self.total:
            start += _SCALE["snapshot"] * min(1.0, self.done / self.total)
        return round(start, 4)

    @property
    def unhashed(self) -> bool:
        """Items were set aside without their digests in the record's hashes (a commit
        begun before an upgrade): the commit begins again.

        >>> CommitRecord("tx1", "aside", done=5).unhashed
        True
        """
        return self.done > 0 and self.step in ("aside", "snapshot", "flip") and not self.staged_sha

    @property
    def current_step(self) -> str:
        """What ``GET /status`` says the commit is doing."""
        names = {
            "sweep": "committing: clearing an earlier try",
            "aside": f"committing: {self.done} of {self.total} items written aside",
            "snapshot": "committing: storing the snapshot",
            "flip": "committing: applying",
        }
        return names.get(self.step, "completed")

    def next(self, **changes: Any) -> CommitRecord:
        """The record after one more slice."""
        return dataclasses.replace(self, part=self.part + 1, updated_at=time.time(), **changes)


def commit_message(user_id: str, session_id: str) -> str:
    """The SQS body of the job that runs the next slice of a session's commit.

    >>> commit_message("alice", "s1")
    '{"type":"CommitSession","userId":"alice","sessionId":"s1"}'
    """
    body = {"type": COMMIT_JOB, "userId": user_id, "sessionId": session_id}
    return json.dumps(body, separators=(",", ":"))


def progress(storage: AwsStorage, session: Session) -> tuple[float, str] | None:
    """``(progress, currentStep)`` of the session's commit; sends its job again when no
    slice ran for a visibility timeout (the jobs stopped: lost, or dead-lettered)."""
    record = nudge(storage, session.user_id, session.id)
    return None if record is None else (record.progress, record.current_step)


def nudge(storage: AwsStorage, user_id: str, session_id: str) -> CommitRecord | None:
    """The session's commit record; its job is sent again if no slice ran for a
    visibility timeout (a healthy commit is left alone: a second job would only lose)."""
    record = load_record(storage, session_id)
    if record is None or record.step == "done":
        return record
    if time.time() - record.updated_at > storage.settings.visibility_timeout:
        logger.warning("session %s: commit stalled at %s; queued again", session_id, record.step)
        resources = storage.resources
        resources.sqs.send_message(
            QueueUrl=resources.queue_url, MessageBody=commit_message(user_id, session_id)
        )
    return record


def load_record(storage: AwsStorage, session_id: str) -> CommitRecord | None:
    """The session's commit record (``None``: no commit was decided yet).

    >>> load_record(storage, "s1").step  # doctest: +SKIP
    'aside'
    """
    row = storage.table.get(session_pk(session_id), COMMIT_SK)
    if row is None:
        return None
    state = json.loads(get_s(row, "state"))
    after, outbox = state.pop("after"), state.pop("outbox")
    return CommitRecord(
        after=tuple(after) if after else None, outbox=tuple(outbox) if outbox else None, **state
    )


def _row(session_id: str, record: CommitRecord) -> Row:
    row = key(session_pk(session_id), COMMIT_SK)
    state = dataclasses.asdict(record)
    row.update({"part": n(record.part), "state": s(json.dumps(state, separators=(",", ":")))})
    return row


def record_op(session_id: str, record: CommitRecord, expected: int | None) -> Op:
    """The write of ``record`` in a transaction: only if the stored one is still at
    part ``expected`` (``None``: there is none).

    >>> record_op("s1", CommitRecord("tx1", "aside"), None).target
    ('SESSION#s1', 'COMMIT')
    """
    condition = "attribute_not_exists(#pk)" if expected is None else "#part = :expected"
    body: dict[str, Any] = {
        "Item": _row(session_id, record),
        "ConditionExpression": condition,
        "ExpressionAttributeNames": expression_names(condition),
    }
    if expected is not None:
        body["ExpressionAttributeValues"] = {":expected": n(expected)}
    return Op({"Put": body}, (session_pk(session_id), COMMIT_SK))


def save_record(
    storage: AwsStorage, session_id: str, record: CommitRecord, expected: int | None
) -> bool:
    """Store ``record`` if the stored one is at part ``expected`` (``None``: if none is
    stored); ``False`` when another slice (or try) moved it first.

    >>> save_record(storage, "s1", record.next(), record.part)  # doctest: +SKIP
    True
    """
    row = _row(session_id, record)
    if expected is None:
        condition, values = "attribute_not_exists(#pk)", None
    else:
        condition, values = "#part = :expected", {":expected": n(expected)}
    try:
        storage.table.put(row, condition=condition, values=values)
    except VersionConflict:
        return False
    return True


def replace_record(storage: AwsStorage, session_id: str, record: CommitRecord) -> None:
    """Store ``record`` whatever is stored (a new decision replaces an ended try)."""
    storage.table.put(_row(session_id, record))


def drop_aside(storage: AwsStorage, tx: str, user_id: str, limit: int) -> bool:
    """Delete up to ``limit`` set-aside rows of ``tx``; ``True`` once none is left."""
    pk = aside_pk(tx, user_id)
    rows: list[Row] = []
    for row in storage.table.query(pk, limit=limit, projection="#pk, #sk"):
        rows.append(row)
        if len(rows) == limit:
            break
    storage.table.batch_write(deletes=[key(pk, get_s(r, "sk")) for r in rows])
    return len(rows) < limit
