"""Batch processing off the request path: the ``aws`` backend's intake, and its worker.

On the ``aws`` backend, ``PUT .../batches/{seq}`` runs :func:`accept_batch`: it checks what
needs no other data (the plan's range, the SHA-256, the JSON and its items, the
manifest's item count), stores the body in S3, records the batch as ``pending`` in the
ledger and sends a job to SQS. The receipt acknowledges a *stored* batch (its counts stay
zero; ``GET /status`` says ``processing`` until ``processedBatches`` equals
``batchCount``, and the summary has the counts).

:class:`Worker` (``python -m backend_stub worker``, or the SQS-triggered Lambda in
:mod:`backend_stub.lambda_handler`) takes jobs from the queue and processes each batch
with the very function the embedded server runs inline,
:func:`backend_stub.batches.put_batch`: transform, validate, detect conflicts, stage.
SQS delivers at least once, so:

* a job whose batch is no longer pending (processed, failed, purged) is dropped;
* a worker takes a lease on the batch; a second worker on the same message meanwhile
  leaves it for later, and the storage's fenced, attempt-tagged writes make sure only one
  attempt ever counts (see :mod:`backend_stub.storage.aws`);
* a refusal of the batch's content (an item another batch already staged, more items
  than the manifest) fails the batch at once: ``status`` lists the reason in ``errors``
  and drops the batch from ``receivedBatches``, so the client sends it again;
* anything else is retried with backoff; on the last receive the batch is failed the same
  way, and SQS moves the message to the dead-letter queue.

The job format is one JSON object::

    >>> job_message("alice", "s1", 3, "0" * 64)
    '{"type":"ProcessBatch","userId":"alice","sessionId":"s1","seq":3,"checksum":"000...'
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from backend_stub.batches import check_upload, put_batch
from backend_stub.bodies import Upload
from backend_stub.committing import commit_slice
from backend_stub.events import UserRegistered, handle_user_registered
from backend_stub.items import parse_batch
from backend_stub.monitoring import metric
from backend_stub.problems import ApiError
from backend_stub.service import ensure_open, load_session, now_ms, retrying
from backend_stub.settings import Settings
from backend_stub.storage import Storage
from backend_stub.storage.aws import AwsStorage
from backend_stub.storage.aws_ledger import FAILED, PENDING, BatchBusy, HeldBatch
from backend_stub.storage.aws_slices import COMMIT_JOB, commit_message
from backend_stub.storage.aws_sweep import sweep_aside
from backend_stub.storage.records import CommitRolling
from sdk.contract import BatchReceipt, ProblemCode

__all__ = ["JOB_TYPE", "Outcome", "Worker", "accept_batch", "job_message"]

logger = logging.getLogger(__name__)

#: ``type`` of a batch job message.
JOB_TYPE = "ProcessBatch"
# SQS allows at most 12 hours of invisibility; backoff stays far below.
_MAX_DELAY = 900
#: How long a commit waits for another migration of its user to roll forward.
_ROLL_WAIT_S = 5
_SWEEP_EVERY = 60.0


def job_message(user_id: str, session_id: str, seq: int, checksum: str) -> str:
    """The SQS body of the job that processes one stored batch.

    >>> json.loads(job_message("alice", "s1", 0, "c" * 64))["type"]
    'ProcessBatch'
    """
    return json.dumps(
        {
            "type": JOB_TYPE,
            "userId": user_id,
            "sessionId": session_id,
            "seq": seq,
            "checksum": checksum,
        },
        separators=(",", ":"),
    )


def accept_batch(
    storage: Storage,
    settings: Settings,
    user_id: str,
    session_id: str,
    seq: int,
    upload: Upload,
    *,
    now: int,
) -> BatchReceipt:
    """Store batch ``seq`` and queue its processing; a replay answers the same receipt.

    Replaying a batch that is still pending sends its job again (the first may have been
    lost between the ledger and the queue); the worker runs a job once however often it
    arrives. It needs the ``aws`` backend:

    >>> from backend_stub.storage.sqlite import SQLiteStorage
    >>> accept_batch(SQLiteStorage.in_memory(), Settings(), "alice", "s1", 0,
    ...              Upload(b"{}", "0" * 64), now=0)
    Traceback (most recent call last):
    ...
    TypeError: accept_batch needs the aws backend; the embedded one runs put_batch
    """
    if not isinstance(storage, AwsStorage):
        raise TypeError("accept_batch needs the aws backend; the embedded one runs put_batch")
    aws = storage
    session = load_session(aws, user_id, session_id)
    check_upload(session, seq, upload)
    count = len(parse_batch(upload.body, max_items=settings.limits.max_batch_items))

    def attempt() -> BatchReceipt:
        current = load_session(aws, user_id, session_id)
        held = aws.ledger.held(current.id, seq)
        if held is not None and held.state != FAILED:
            if held.checksum != upload.checksum:
                raise ApiError(
                    409,
                    ProblemCode.BATCH_MISMATCH,
                    f"batch {seq} was already received with different content; a batch's"
                    " content must not change within a migration",
                    extra={"storedChecksum": held.checksum},
                )
            if held.state == PENDING:
                _enqueue(aws, user_id, held)
            return held.receipt(replayed=True)
        ensure_open(current, now)
        waiting = sum(b.item_count for b in aws.ledger.pending(current.id))
        if current.staged_count + waiting + count > current.manifest.item_count:
            raise ApiError(
                409,
                ProblemCode.INVALID_STATE,
                f"this batch would take the session past the manifest's"
                f" {current.manifest.item_count} items",
            )
        stored = aws.ledger.receive(
            current.id, seq, upload.checksum, upload.body, count, now, replacing=held
        )
        _enqueue(aws, user_id, stored)
        logger.info("session %s: batch %d stored and queued (%d items)", current.id, seq, count)
        return stored.receipt()

    return retrying(attempt)


def _enqueue(storage: AwsStorage, user_id: str, held: HeldBatch) -> None:
    storage.resources.sqs.send_message(
        QueueUrl=storage.resources.queue_url,
        MessageBody=job_message(user_id, held.session_id, held.seq, held.checksum),
    )


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What to do with a message: delete it (``done``), or let it come back after ``delay``
    seconds.

    >>> Outcome(done=False, delay=4).delay
    4
    """

    done: bool
    delay: int = 0


class Worker:
    """Takes jobs from the queue and processes them, once each (see the module docs).

    ``wait_seconds`` is the long-polling wait of a receive (0: return at once, then wait
    ``idle_wait`` when the queue was empty); ``clock`` gives the service's ``now``. It
    needs a queue, so it is shown, not run::

        Worker(AwsStorage.open(settings.aws), settings).run(threading.Event())

    >>> Outcome(done=True).done
    True
    """

    def __init__(
        self,
        storage: AwsStorage,
        settings: Settings,
        *,
        clock: Callable[[], int] = now_ms,
        wait_seconds: int = 20,
        idle_wait: float = 1.0,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.clock = clock
        self.wait_seconds = wait_seconds
        self.idle_wait = idle_wait
        #: Owner of this worker's leases: its own retries may take its batches back.
        self.run_id = uuid.uuid4().hex
        self._sqs = storage.resources.sqs

    # ------------------------------------------------------------------ one message

    def handle(self, body: str, receive_count: int) -> Outcome:
        """Process one message body, delivered for the ``receive_count``-th time."""
        try:
            message = json.loads(body)
        except ValueError:
            logger.error("a message is not JSON; it will end in the dead-letter queue")
            return self._retry(receive_count)
        if not isinstance(message, dict):
            logger.error("a message is not a JSON object; it will end in the dead-letter queue")
            return self._retry(receive_count)
        if message.get("detail-type") == "UserRegistered":
            return self._user_registered(message)
        if message.get("type") == COMMIT_JOB:
            return self._commit(message, receive_count)
        if message.get("type") != JOB_TYPE:
            logger.error("unknown message %.200s; it will end in the dead-letter queue", body)
            return self._retry(receive_count)
        try:
            user_id = str(message["userId"])
            session_id = str(message["sessionId"])
            seq = int(message["seq"])
            checksum = str(message["checksum"])
        except (KeyError, TypeError, ValueError):
            logger.error("malformed job %.200s; it will end in the dead-letter queue", body)
            return self._retry(receive_count)
        return self._process(user_id, session_id, seq, checksum, receive_count)

    def _process(
        self, user_id: str, session_id: str, seq: int, checksum: str, receive_count: int
    ) -> Outcome:
        held = self.storage.ledger.held(session_id, seq)
        if held is None or held.checksum != checksum or held.state != PENDING:
            # Processed already (a duplicate delivery), failed, replaced or purged.
            logger.info("session %s: job for batch %d has nothing left to do", session_id, seq)
            return Outcome(done=True)
        started = time.monotonic()
        try:
            body = self.storage.ledger.load(held)
            with self.storage.ledger.lease(self.run_id):
                receipt = put_batch(
                    self.storage,
                    self.settings,
                    user_id,
                    session_id,
                    seq,
                    Upload(body, checksum),
                    now=self.clock(),
                )
        except BatchBusy as busy:
            logger.info("session %s: batch %d is leased by another worker", session_id, seq)
            return Outcome(done=False, delay=min(busy.retry_in, _MAX_DELAY))
        except ApiError as refused:
            return self._refused(held, refused, receive_count)
        except Exception as exc:
            return self._failed(held, exc, receive_count)
        metric(
            logger,
            "BatchProcessed",
            {
                "Items": receipt.item_count,
                "NewItems": receipt.new_count,
                "UnchangedItems": receipt.unchanged_count,
                "Conflicts": receipt.conflict_count,
                "ProcessingMs": (time.monotonic() - started) * 1000,
                "Receives": receive_count,
            },
            f"session {session_id}: batch {seq} processed",
            sessionId=session_id,
            userId=user_id,
            seq=seq,
            replayed=receipt.replayed,
        )
        return Outcome(done=True)

    def _commit(self, message: dict[str, Any], receive_count: int) -> Outcome:
        """One slice of a session's commit; the next slice goes on as a new job."""
        user_id, session_id = message.get("userId"), message.get("sessionId")
        if not isinstance(user_id, str) or not isinstance(session_id, str):
            logger.error("malformed commit job %.200s; it goes to the dead-letter queue", message)
            return self._retry(receive_count)
        try:
            more = commit_slice(self.storage, self.settings, user_id, session_id, now=self.clock())
            if more:
                self._sqs.send_message(
                    QueueUrl=self.storage.resources.queue_url,
                    MessageBody=commit_message(user_id, session_id),
                )
        except CommitRolling as rolling:
            # Another migration of the user still rolls forward (its own jobs finish it):
            # this commit comes back later, as a new job, so that waiting never counts
            # towards the dead-letter queue.
            logger.info("session %s waits for %s to roll forward", session_id, rolling.session_id)
            self._sqs.send_message(
                QueueUrl=self.storage.resources.queue_url,
                MessageBody=commit_message(user_id, session_id),
                DelaySeconds=_ROLL_WAIT_S,
            )
        except ApiError as refused:
            if refused.status == 404:
                return Outcome(done=True)
            logger.warning("session %s: a commit slice was refused: %s", session_id, refused)
            return self._retry(receive_count)
        except Exception:
            # The slice resumes from the commit record when the job comes back.
            logger.exception("session %s: a commit slice failed; retried", session_id)
            return self._retry(receive_count)
        return Outcome(done=True)

    def _refused(self, held: HeldBatch, refused: ApiError, receive_count: int) -> Outcome:
        if refused.code is ProblemCode.VERSION_CONFLICT:
            return self._retry(receive_count)
        if refused.status == 404 or (refused.extra and "sessionStatus" in refused.extra):
            logger.info("session %s is gone or closed: job dropped", held.session_id)
            return Outcome(done=True)
        if refused.code is ProblemCode.SESSION_EXPIRED:
            logger.info("session %s expired: job dropped", held.session_id)
            return Outcome(done=True)
        # The content itself is refused: retrying cannot help; the client must resend.
        self._fail(held, refused.detail)
        return Outcome(done=True)

    def _failed(self, held: HeldBatch, exc: Exception, receive_count: int) -> Outcome:
        if receive_count >= self.settings.aws.max_receives:
            logger.exception(
                "session %s: batch %d failed on its last receive; it goes to the dead-letter queue",
                held.session_id,
                held.seq,
            )
            self._fail(held, f"processing failed {receive_count} times: {exc}")
            metric(
                logger,
                "BatchDeadLettered",
                {"Batches": 1},
                sessionId=held.session_id,
                seq=held.seq,
            )
            # Not deleted: the next receive moves it to the dead-letter queue.
            return Outcome(done=False)
        logger.warning(
            "session %s: batch %d failed (receive %d), retried later: %s",
            held.session_id,
            held.seq,
            receive_count,
            exc,
        )
        return self._retry(receive_count)

    def _fail(self, held: HeldBatch, reason: str) -> None:
        if self.storage.ledger.fail(held.session_id, held.seq, held.checksum, reason, self.clock()):
            metric(
                logger,
                "BatchFailed",
                {"Batches": 1},
                f"session {held.session_id}: batch {held.seq} failed: {reason}",
                sessionId=held.session_id,
                seq=held.seq,
            )

    def _retry(self, receive_count: int) -> Outcome:
        delay = self.settings.aws.retry_delay * 2 ** max(0, receive_count - 1)
        return Outcome(done=False, delay=min(int(delay + 0.999), _MAX_DELAY))

    def _user_registered(self, message: dict[str, Any]) -> Outcome:
        detail = message.get("detail") or {}
        user_id = detail.get("userId") if isinstance(detail, dict) else None
        if not isinstance(user_id, str) or not user_id:
            logger.error("a UserRegistered event without a userId was dropped")
            return Outcome(done=True)
        registered_at = detail.get("registeredAt")
        if not isinstance(registered_at, int):
            registered_at = self.clock()
        handle_user_registered(self.storage, UserRegistered(user_id, registered_at))
        return Outcome(done=True)

    # ------------------------------------------------------------------ the queue

    def poll(self, *, max_messages: int = 10, wait_seconds: int | None = None) -> int:
        """Receive up to ``max_messages`` jobs, handle them; returns how many arrived."""
        answer = self._sqs.receive_message(
            QueueUrl=self.storage.resources.queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=self.wait_seconds if wait_seconds is None else wait_seconds,
            AttributeNames=["ApproximateReceiveCount"],
        )
        messages = answer.get("Messages", [])
        for message in messages:
            count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            outcome = self.handle(message["Body"], count)
            self.settle(message["ReceiptHandle"], outcome)
        return len(messages)

    def settle(self, receipt_handle: str, outcome: Outcome) -> None:
        """Delete a handled message, or make it visible again after the outcome's delay."""
        url = self.storage.resources.queue_url
        try:
            if outcome.done:
                self._sqs.delete_message(QueueUrl=url, ReceiptHandle=receipt_handle)
            else:
                self._sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=receipt_handle, VisibilityTimeout=outcome.delay
                )
        except Exception:
            # The message comes back after its visibility timeout: a job runs once anyway.
            logger.warning("could not settle a message; it will be delivered again")

    def drain(self, *, timeout: float = 30.0) -> int:
        """Handle jobs until a receive finds the queue empty (tests, one-off runs)."""
        deadline = time.monotonic() + timeout
        handled = 0
        while time.monotonic() < deadline:
            received = self.poll(wait_seconds=0)
            handled += received
            if not received:
                return handled
        raise TimeoutError(f"the queue was still busy after {timeout} s")

    def run(self, stop: threading.Event) -> None:
        """Handle jobs until ``stop`` is set; publishes stalled outbox events now and then."""
        logger.info("worker %s polling %s", self.run_id, self.settings.aws.queue)
        swept = 0.0
        while not stop.is_set():
            try:
                received = self.poll()
            except Exception:
                logger.exception("receiving from the queue failed; trying again")
                stop.wait(5.0)
                continue
            if not received and self.wait_seconds == 0:
                stop.wait(self.idle_wait)
            if time.monotonic() - swept > _SWEEP_EVERY:
                swept = time.monotonic()
                try:
                    self.storage.publish_outbox()
                    sweep_aside(self.storage)
                except Exception:
                    logger.exception("sweeping the outbox failed; trying again later")
        logger.info("worker %s stopped", self.run_id)
