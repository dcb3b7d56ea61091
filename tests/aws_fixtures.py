"""Fixtures for the aws backend: moto in server mode on loopback, fresh resources per test.

One moto server runs for the whole session on ``127.0.0.1`` and a free port; every test
gets its own table, bucket, queues and bus (unique names), so tests never see each
other's data. Clients get dummy credentials and the endpoint explicitly: nothing ever
leaves the loopback interface.

The ``backend`` fixture parametrizes the server's contract tests over ``sqlite`` and
``aws`` (see ``server_fixtures.running_server``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from backend_stub import localaws
from backend_stub.settings import AwsSettings, Settings
from backend_stub.storage.aws import AwsStorage
from backend_stub.storage.aws_resources import EVENT_SOURCE, AwsResources, provision
from backend_stub.worker import Worker

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto server started for this test session: the
    README's local AWS (:mod:`backend_stub.localaws`), in a thread."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)  # one access-log line per request otherwise
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        for target, name, value in localaws.patches():
            patch.setattr(target, name, value)
        server = localaws.local_aws()
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()
            werkzeug.setLevel(level)


@pytest.fixture(scope="session")
def boto_session(moto_endpoint: str) -> Any:
    """One boto3 session: its loaded service models make each test's clients cheap."""
    import boto3

    return boto3.session.Session(region_name="us-east-1")


@dataclasses.dataclass
class AwsBackend:
    """Freshly provisioned resources, and storages on them (sharing one set of clients)."""

    settings: AwsSettings
    session: Any

    @functools.cached_property
    def resources(self) -> AwsResources:
        return AwsResources(self.settings, session=self.session)

    def open(self) -> AwsStorage:
        """Another storage on the same data (another process, as far as caches go)."""
        return AwsStorage(self.resources)


def fresh_aws_backend(moto_endpoint: str, boto_session: Any, **overrides: Any) -> AwsBackend:
    """A table, bucket, job queue (3 receives, then the dead-letter queue), bus and rule
    of the caller's own; failed jobs come back at once (no backoff). ``overrides``
    replace :class:`AwsSettings` fields (before the resources are made)."""
    suffix = uuid.uuid4().hex[:10]
    settings = AwsSettings(
        endpoint_url=moto_endpoint,
        table=f"mig-{suffix}",
        bucket=f"mig-{suffix}",
        queue=f"jobs-{suffix}",
        dead_letter_queue=f"dead-{suffix}",
        event_bus=f"bus-{suffix}",
        max_receives=3,
        visibility_timeout=60,
        retry_delay=0.0,
    )
    settings = dataclasses.replace(settings, **overrides)
    backend = AwsBackend(settings, boto_session)
    provision(backend.resources)
    return backend


@pytest.fixture
def aws_backend(moto_endpoint: str, boto_session: Any) -> AwsBackend:
    """This test's own AWS resources (:func:`fresh_aws_backend`)."""
    return fresh_aws_backend(moto_endpoint, boto_session)


@pytest.fixture
def aws_storage(aws_backend: AwsBackend) -> Iterator[AwsStorage]:
    storage = aws_backend.open()
    yield storage
    storage.close()


@dataclasses.dataclass(frozen=True)
class Backend:
    """Which storage backend a contract test runs on (``aws`` only with ``aws``)."""

    name: str
    aws: AwsBackend | None = None


def backend_named(request: pytest.FixtureRequest, name: str) -> Backend:
    """The :class:`Backend` called ``name``, provisioning AWS resources if it is ``aws``."""
    if name == "sqlite":
        return Backend("sqlite")
    return Backend("aws", request.getfixturevalue("aws_backend"))


@pytest.fixture(params=["sqlite", "aws"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each test using it runs twice: on the embedded backend and on the aws one."""
    return backend_named(request, request.param)


class WorkerThread:
    """``Worker.run`` in a thread, for as long as the ``with`` block lasts (no long
    polling: a stop waits for the receive in progress)."""

    def __init__(
        self, storage: AwsStorage, settings: Settings, *, clock: Callable[[], int] | None = None
    ) -> None:
        kwargs: dict[str, Any] = {"clock": clock} if clock else {}
        self.worker = Worker(storage, settings, wait_seconds=0, idle_wait=0.005, **kwargs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.worker.run, args=(self._stop,))

    def __enter__(self) -> Worker:
        self._thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the worker did not stop"


class Tap:
    """A queue subscribed to everything this server publishes on the test's bus."""

    def __init__(self, backend: AwsBackend) -> None:
        resources = backend.resources
        self._sqs = resources.sqs
        name = f"tap-{uuid.uuid4().hex[:10]}"
        self.url = self._sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        events = resources.events
        events.put_rule(
            Name=name,
            EventBusName=resources.event_bus,
            EventPattern=json.dumps({"source": [EVENT_SOURCE]}),
        )
        events.put_targets(
            Rule=name, EventBusName=resources.event_bus, Targets=[{"Id": "tap", "Arn": arn}]
        )

    def collect(self, count: int, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """At least ``count`` events (EventBridge envelopes), or fail after ``timeout``."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            assert time.monotonic() < deadline, f"only {len(found)} of {count} events arrived"
            answer = self._sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10)
            for message in answer.get("Messages", []):
                found.append(json.loads(message["Body"]))
                self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        return found


def tap_events(backend: AwsBackend) -> Tap:
    """Subscribe a fresh queue to the events published on ``backend``'s bus."""
    return Tap(backend)


def expire_every_ttl(storage: AwsStorage, *, days: int) -> int:
    """What DynamoDB's TTL would have deleted ``days`` from now (moto does not expire)."""
    horizon = int(time.time()) + days * 24 * 3600
    pages = storage.resources.dynamodb.get_paginator("scan").paginate(
        TableName=storage.table.name,
        FilterExpression="attribute_exists(#ttl)",
        ExpressionAttributeNames={"#ttl": "ttl"},
    )
    doomed = [
        {"pk": row["pk"], "sk": row["sk"]}
        for page in pages
        for row in page["Items"]
        if int(row["ttl"]["N"]) <= horizon
    ]
    storage.table.batch_write(deletes=doomed)
    return len(doomed)


def rows_under(storage: AwsStorage, prefix: str) -> int:
    return sum(1 for r in storage.table.scan("begins_with(#pk, :p)", {":p": {"S": prefix}}))
