"""AWS Lambda entry points: the API, the batch worker, and inbound events.

Deploy the same package three times (settings come from ``MIGRATION_*`` environment
variables; the role's credentials from Lambda):

``backend_stub.lambda_handler.api``
    behind API Gateway (HTTP API or REST) or a function URL: the FastAPI app through the
    Mangum ASGI adapter.
``backend_stub.lambda_handler.worker``
    triggered by the job queue (an SQS event source mapping with
    ``ReportBatchItemFailures``): each record is one job; the ones to retry are reported
    as ``batchItemFailures`` and come back after their backoff.
``backend_stub.lambda_handler.events``
    the target of an EventBridge rule on ``UserRegistered``.
``backend_stub.lambda_handler.publish_outbox``
    invoked by an EventBridge schedule: publishes the outbox's stranded events, queues
    again a commit whose jobs stopped, finishes or deletes the set-aside rows of units
    that died: no long-lived worker is needed.

Nothing is built at import time: the app, the storage and the worker are made by the
first invocation of a container and reused by the next ones. Logs are JSON lines with
CloudWatch embedded metrics::

    >>> sqs_failures([("m1", Outcome(done=True)), ("m2", Outcome(done=False, delay=4))])
    {'batchItemFailures': [{'itemIdentifier': 'm2'}]}
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from backend_stub.app import create_app
from backend_stub.identity import announce_token_mode
from backend_stub.monitoring import configure_logging
from backend_stub.settings import Settings
from backend_stub.worker import Outcome, Worker

__all__ = ["api", "events", "publish_outbox", "sqs_failures", "worker"]

_OUTBOX_PAGE = 100


def api(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The HTTP API: an API Gateway (or function URL) event in, its response out.

    >>> api.__name__
    'api'
    """
    answer: dict[str, Any] = _api()(event, context)
    return answer


def worker(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """An SQS batch of jobs: handle each, report the ones to retry (partial failures).

    >>> worker.__name__
    'worker'
    """
    processor = _worker()
    outcomes = []
    for record in event.get("Records", []):
        count = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
        outcome = processor.handle(record["body"], count)
        if not outcome.done:
            # Retried after the outcome's backoff rather than the queue's full timeout.
            processor.settle(record["receiptHandle"], outcome)
        outcomes.append((record["messageId"], outcome))
    return sqs_failures(outcomes)


def events(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """An EventBridge event (``UserRegistered``) delivered to the function directly.

    >>> events.__name__
    'events'
    """
    outcome = _worker().handle(json.dumps(event), 1)
    return {"handled": outcome.done}


def publish_outbox(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A scheduled sweep: publish the outbox's pending events, a page at a time, while
    the invocation has time left (``context.get_remaining_time_in_millis``).

    >>> publish_outbox.__name__
    'publish_outbox'
    """
    from backend_stub.storage.aws_sweep import sweep_aside

    storage = _worker().storage
    published = 0
    while True:
        count = storage.publish_outbox(limit=_OUTBOX_PAGE)
        published += count
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if count < _OUTBOX_PAGE or (remaining is not None and remaining() < 10_000):
            # Then the set-aside rows of units that died (see aws_sweep).
            return {"published": published, "swept": sweep_aside(storage)}


def sqs_failures(outcomes: Iterable[tuple[str, Outcome]]) -> dict[str, Any]:
    """The partial batch response for SQS: the message ids that were not done.

    >>> sqs_failures([("m1", Outcome(done=True))])
    {'batchItemFailures': []}
    """
    return {
        "batchItemFailures": [
            {"itemIdentifier": message_id} for message_id, outcome in outcomes if not outcome.done
        ]
    }


@functools.cache
def _settings() -> Settings:
    configure_logging(json_lines=True)
    return Settings.from_env()


@functools.cache
def _api() -> Any:
    from mangum import Mangum  # the aws extra

    settings = _settings()
    announce_token_mode(settings)
    # lifespan off: the storage lives as long as the container, not one invocation.
    return Mangum(create_app(settings), lifespan="off")


@functools.cache
def _worker() -> Worker:
    from backend_stub.storage.aws import AwsStorage

    settings = _settings()
    if settings.backend != "aws":
        raise RuntimeError("the worker needs MIGRATION_BACKEND=aws")
    return Worker(AwsStorage.open(settings.aws), settings, wait_seconds=0)
