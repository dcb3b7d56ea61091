"""The AWS resources of the ``aws`` backend: boto3 clients built from settings, and a
provisioner for development and tests.

:class:`AwsResources` holds one client per service (DynamoDB, S3, SQS, EventBridge),
configured from :class:`~backend_stub.settings.AwsSettings`. Building it opens no
connection; the clients are thread-safe and shared by every request of a process.
Credentials come from the standard AWS chain (environment, profile, role)::

    >>> from backend_stub.settings import AwsSettings
    >>> resources = AwsResources(AwsSettings(endpoint_url="http://127.0.0.1:1"))
    >>> resources.sse_args()
    {'ServerSideEncryption': 'AES256'}

:func:`provision` creates the table, bucket, queues, bus and rule if they are missing: what
``python -m backend_stub aws-setup`` runs against moto or LocalStack. On AWS, deploy
``deploy/template.yaml`` (CloudFormation) instead; a test checks that it describes the
same table (:func:`table_definition`, :data:`TTL_ATTRIBUTE`), queues and bus.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from typing import Any

from backend_stub.settings import AwsSettings

__all__ = [
    "EVENT_SOURCE",
    "OUTBOX_INDEX",
    "TTL_ATTRIBUTE",
    "AwsResources",
    "provision",
    "table_definition",
]

logger = logging.getLogger(__name__)

#: ``source`` of the events this server publishes on the bus.
EVENT_SOURCE = "offline-migrate"
#: The sparse index of events not yet published (the outbox sweeper reads it).
OUTBOX_INDEX = "outbox"
#: The attribute DynamoDB's TTL reads (epoch seconds) on every row that may expire.
TTL_ATTRIBUTE = "ttl"


class AwsResources:
    """The four clients of the backend and the names of its resources.

    ``session`` is a ``boto3.session.Session`` (a fresh one by default).

    >>> from backend_stub.settings import AwsSettings
    >>> resources = AwsResources(AwsSettings(table="t", endpoint_url="http://127.0.0.1:1"))
    >>> resources.table, resources.dynamodb.meta.region_name
    ('t', 'us-east-1')
    """

    def __init__(self, settings: AwsSettings, *, session: Any | None = None) -> None:
        import boto3  # type: ignore[import-untyped]  # the aws extra only
        from botocore.config import Config  # type: ignore[import-untyped]

        self.settings = settings
        self.table = settings.table
        self.bucket = settings.bucket
        self.event_bus = settings.event_bus
        session = session or boto3.session.Session(region_name=settings.region)
        # Standard retries absorb throttling; a pool as large as the API's thread pool.
        config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=64,
            connect_timeout=5,
            read_timeout=30,
        )

        def client(name: str) -> Any:
            return session.client(
                name,
                region_name=settings.region,
                endpoint_url=settings.endpoint_url,
                config=config,
            )

        self._session = session
        self.dynamodb = client("dynamodb")
        self.s3 = client("s3")
        self.sqs = client("sqs")
        self.events = client("events")

    @functools.cached_property
    def s3_signer(self) -> Any:
        """An S3 client for presigned URLs only (no call is made): SigV4, so a URL can
        bind headers (a part's checksum and length); on AWS the bucket's own regional
        host, which works from the first minute of a new bucket."""
        from botocore.config import Config

        style = "path" if self.settings.endpoint_url else "virtual"
        return self._session.client(
            "s3",
            region_name=self.settings.region,
            endpoint_url=self.settings.endpoint_url,
            config=Config(signature_version="s3v4", s3={"addressing_style": style}),
        )

    @functools.cached_property
    def queue_url(self) -> str:
        """The URL of the job queue (looked up once)."""
        url: str = self.sqs.get_queue_url(QueueName=self.settings.queue)["QueueUrl"]
        return url

    @functools.cached_property
    def dead_letter_queue_url(self) -> str:
        """The URL of the dead-letter queue (looked up once)."""
        url: str = self.sqs.get_queue_url(QueueName=self.settings.dead_letter_queue)["QueueUrl"]
        return url

    def sse_args(self) -> dict[str, str]:
        """The server-side encryption arguments of every S3 write."""
        args = {"ServerSideEncryption": self.settings.sse}
        if self.settings.sse == "aws:kms" and self.settings.kms_key_id:
            args["SSEKMSKeyId"] = self.settings.kms_key_id
        return args


def provision(resources: AwsResources) -> None:
    """Create whatever of the backend's resources is missing (idempotent).

    * the DynamoDB table: keys ``pk``/``sk`` (strings), on-demand, TTL on ``ttl``, and the
      sparse ``outbox`` index (``obx``, ``sk``) of unpublished events;
    * the S3 bucket: default encryption, public access blocked;
    * the dead-letter queue, and the job queue redriving to it after
      ``max_receives`` receives;
    * the event bus, and a rule sending ``UserRegistered`` events to the job queue.

    It talks to the endpoint of ``resources`` (the tests run it against moto):

    >>> provision(AwsResources(AwsSettings(endpoint_url="http://127.0.0.1:5000")))
    ... # doctest: +SKIP
    """
    _table(resources)
    _bucket(resources)
    _queues(resources)
    _bus(resources)
    logger.info("aws resources ready: table %s, bucket %s", resources.table, resources.bucket)


def table_definition(name: str) -> dict[str, Any]:
    """The ``CreateTable`` arguments of the backend's table (one table, on demand).

    >>> sorted(table_definition("t"))
    ['AttributeDefinitions', 'BillingMode', 'GlobalSecondaryIndexes', 'KeySchema', 'TableName']
    """
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "obx", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": OUTBOX_INDEX,
                "KeySchema": [
                    {"AttributeName": "obx", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
    }


def _table(resources: AwsResources) -> None:
    ddb = resources.dynamodb
    try:
        ddb.create_table(**table_definition(resources.table))
    except ddb.exceptions.ResourceInUseException:
        return
    ddb.get_waiter("table_exists").wait(
        TableName=resources.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    ddb.update_time_to_live(
        TableName=resources.table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
    )


def _bucket(resources: AwsResources) -> None:
    s3 = resources.s3
    region = resources.settings.region
    try:
        if region == "us-east-1":
            s3.create_bucket(Bucket=resources.bucket)
        else:
            s3.create_bucket(
                Bucket=resources.bucket,
                CreateBucketConfiguration={"LocationConstraint": region},
            )
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        return
    rule: dict[str, Any] = {"SSEAlgorithm": resources.settings.sse}
    if resources.settings.kms_key_id:
        rule["KMSMasterKeyID"] = resources.settings.kms_key_id
    s3.put_bucket_encryption(
        Bucket=resources.bucket,
        ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": rule}]},
    )
    # A session's working copy (batch bodies, commit parts, snapshot) goes after the
    # retention of its working set, as in deploy/template.yaml; blobs/ stay.
    s3.put_bucket_lifecycle_configuration(
        Bucket=resources.bucket,
        LifecycleConfiguration={"Rules": lifecycle_rules(resources.settings.retention_days)},
    )
    s3.put_public_access_block(
        Bucket=resources.bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )


def lifecycle_rules(retention_days: int) -> list[dict[str, Any]]:
    """The bucket's lifecycle rules: session copies expire after the retention.

    >>> [rule["ID"] for rule in lifecycle_rules(30)]
    ['session-working-copies', 'incomplete-uploads']
    """
    return [
        {
            "ID": "session-working-copies",
            "Status": "Enabled",
            "Filter": {"Prefix": "sessions/"},
            "Expiration": {"Days": retention_days},
        },
        {
            "ID": "incomplete-uploads",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        },
    ]


def _queues(resources: AwsResources) -> None:
    sqs = resources.sqs
    settings = resources.settings
    dlq = sqs.create_queue(
        QueueName=settings.dead_letter_queue,
        Attributes={"MessageRetentionPeriod": str(14 * 24 * 3600)},
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sqs.create_queue(
        QueueName=settings.queue,
        Attributes={
            "VisibilityTimeout": str(settings.visibility_timeout),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(settings.max_receives)}
            ),
        },
    )


def _bus(resources: AwsResources) -> None:
    events = resources.events
    with contextlib.suppress(events.exceptions.ResourceAlreadyExistsException):
        events.create_event_bus(Name=resources.event_bus)
    queue_arn = resources.sqs.get_queue_attributes(
        QueueUrl=resources.queue_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    rule_arn = events.put_rule(
        Name=f"{resources.event_bus}-user-registered",
        EventBusName=resources.event_bus,
        EventPattern=json.dumps({"detail-type": ["UserRegistered"]}),
    )["RuleArn"]
    events.put_targets(
        Rule=f"{resources.event_bus}-user-registered",
        EventBusName=resources.event_bus,
        Targets=[{"Id": "job-queue", "Arn": queue_arn}],
    )
    # EventBridge may only deliver to the queue when the queue's policy allows the rule.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
            }
        ],
    }
    resources.sqs.set_queue_attributes(
        QueueUrl=resources.queue_url, Attributes={"Policy": json.dumps(policy)}
    )
