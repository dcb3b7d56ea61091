"""The deployment template (``deploy/template.yaml``) describes what the code expects.

cfn-lint checks it against CloudFormation's schemas; these tests check its resources
against the code (table keys, TTL attribute and index, queue redrive, the functions'
handlers and settings), and deploy it into moto's CloudFormation, where the server then
answers on the resources the stack made.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import re
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode
from server_fixtures import TestClient

from backend_stub import Settings, create_app, issue_token
from backend_stub.settings import AwsSettings
from backend_stub.storage.aws_resources import OUTBOX_INDEX, TTL_ATTRIBUTE, table_definition

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "template.yaml"
HANDLERS = {
    "ApiFunction": "backend_stub.lambda_handler.api",
    "WorkerFunction": "backend_stub.lambda_handler.worker",
    "EventsFunction": "backend_stub.lambda_handler.events",
    "PublisherFunction": "backend_stub.lambda_handler.publish_outbox",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, problems = decode(str(TEMPLATE))
    assert not problems, problems
    assert decoded is not None
    return dict(decoded)


def resources_of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == kind
    }


def default(template: dict[str, Any], parameter: str) -> Any:
    return template["Parameters"][parameter]["Default"]


def settings_names() -> set[str]:
    """Every ``MIGRATION_*`` variable the settings read."""
    source = (ROOT / "backend_stub" / "settings.py").read_text()
    names = set(re.findall(r"\bMIGRATION_[A-Z_]*[A-Z]\b", source))
    names |= {f"MIGRATION_AWS_{f.name.upper()}" for f in dataclasses.fields(AwsSettings)}
    return names


def resolved(value: Any, template: dict[str, Any]) -> str:
    """A variable's value with parameters at their defaults and resources as their name."""
    if isinstance(value, str | int):
        return str(value)
    (function, argument), *_ = value.items()
    if function == "Ref" and argument in template["Parameters"]:
        return str(template["Parameters"][argument].get("Default", f"<{argument}>"))
    if function == "Ref":
        return f"{argument.lower()}-name"
    if function == "Fn::GetAtt":
        return f"{argument[0].lower()}-name"
    if function == "Fn::Join":
        return "<joined>"
    raise AssertionError(f"unexpected {function} in an environment variable")


def test_the_template_passes_cfn_lint_without_errors() -> None:
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))

    errors = [str(m) for m in matches if m.rule.id.startswith("E")]
    assert errors == []


def test_the_table_has_the_keys_index_and_ttl_attribute_the_code_uses(
    template: dict[str, Any],
) -> None:
    (table,) = resources_of(template, "AWS::DynamoDB::Table").values()
    expected = table_definition("unused")

    for part in ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "BillingMode"):
        assert table[part] == expected[part], part
    assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == [OUTBOX_INDEX]
    assert table["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


def test_the_job_queue_redrives_to_the_dead_letter_queue_with_the_settings_defaults(
    template: dict[str, Any],
) -> None:
    queues = resources_of(template, "AWS::SQS::Queue")
    jobs, dead = queues["JobQueue"], queues["DeadLetterQueue"]
    defaults = AwsSettings()

    assert jobs["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["DeadLetterQueue", "Arn"]
    }
    assert jobs["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MaxReceives"}
    assert default(template, "MaxReceives") == defaults.max_receives
    assert jobs["VisibilityTimeout"] == {"Ref": "VisibilityTimeout"}
    assert default(template, "VisibilityTimeout") == defaults.visibility_timeout
    assert default(template, "RetentionDays") == defaults.retention_days
    assert (jobs["QueueName"], dead["QueueName"]) == (
        {"Fn::Sub": "${AppName}-jobs"},
        {"Fn::Sub": "${AppName}-jobs-dlq"},
    )
    assert default(template, "AppName") == defaults.table == defaults.event_bus
    assert f"{defaults.table}-jobs" == defaults.queue
    assert f"{defaults.table}-jobs-dlq" == defaults.dead_letter_queue


@pytest.mark.parametrize("function", list(HANDLERS))
def test_each_function_runs_its_handler_with_settings_the_server_reads(
    template: dict[str, Any], function: str
) -> None:
    properties = resources_of(template, "AWS::Lambda::Function")[function]
    variables = properties["Environment"]["Variables"]
    module, _, name = properties["Handler"].rpartition(".")

    assert properties["Handler"] == HANDLERS[function]
    assert callable(getattr(importlib.import_module(module), name))
    assert set(variables) <= settings_names(), set(variables) - settings_names()
    assert variables["MIGRATION_BACKEND"] == "aws"
    wiring = {
        "MIGRATION_AWS_TABLE": {"Ref": "Table"},
        "MIGRATION_AWS_BUCKET": {"Ref": "Bucket"},
        "MIGRATION_AWS_QUEUE": {"Fn::GetAtt": ["JobQueue", "QueueName"]},
        "MIGRATION_AWS_DEAD_LETTER_QUEUE": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]},
        "MIGRATION_AWS_EVENT_BUS": {"Fn::GetAtt": ["EventBus", "Name"]},
        "MIGRATION_AWS_RETENTION_DAYS": {"Ref": "RetentionDays"},
    }
    assert {name: variables.get(name) for name in wiring} == wiring
    environment = {name: resolved(value, template) for name, value in variables.items()}
    if function == "ApiFunction":
        environment["MIGRATION_JWKS_URL"] = "https://idp.example/jwks.json"
        environment["MIGRATION_JWT_ISSUER"] = "https://idp.example/"
    settings = Settings.from_env(environment)
    assert settings.backend == "aws"
    assert (settings.identity is not None) == (function == "ApiFunction")


def test_the_api_verifies_tokens_of_the_same_provider_as_its_jwt_authorizer(
    template: dict[str, Any],
) -> None:
    (authorizer,) = resources_of(template, "AWS::ApiGatewayV2::Authorizer").values()
    (route,) = resources_of(template, "AWS::ApiGatewayV2::Route").values()
    api = resources_of(template, "AWS::Lambda::Function")["ApiFunction"]
    variables = api["Environment"]["Variables"]

    assert authorizer["AuthorizerType"] == "JWT"
    assert authorizer["JwtConfiguration"]["Issuer"] == variables["MIGRATION_JWT_ISSUER"]
    assert authorizer["JwtConfiguration"]["Audience"] == {"Ref": "JwtAudience"}
    assert variables["MIGRATION_JWT_AUDIENCE"] == {"Fn::Join": [",", {"Ref": "JwtAudience"}]}
    assert variables["MIGRATION_JWKS_URL"] == {"Ref": "JwksUrl"}
    assert (route["AuthorizationType"], route["AuthorizerId"]) == ("JWT", {"Ref": "JwtAuthorizer"})
    assert route["RouteKey"] == "ANY /api/migration/{proxy+}"


def test_the_worker_takes_jobs_from_the_queue_and_reports_partial_failures(
    template: dict[str, Any],
) -> None:
    (mapping,) = resources_of(template, "AWS::Lambda::EventSourceMapping").values()

    assert mapping["FunctionName"] == {"Ref": "WorkerFunction"}
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["JobQueue", "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_user_registered_events_reach_the_events_function_by_the_rule_the_code_names(
    template: dict[str, Any],
) -> None:
    rule = resources_of(template, "AWS::Events::Rule")["UserRegisteredRule"]

    assert rule["Name"] == {"Fn::Sub": "${AppName}-user-registered"}  # as provision() names it
    assert rule["EventPattern"] == {"detail-type": ["UserRegistered"]}
    assert [t["Arn"] for t in rule["Targets"]] == [{"Fn::GetAtt": ["EventsFunction", "Arn"]}]
    assert rule["Targets"][0]["DeadLetterConfig"]["Arn"] == {
        "Fn::GetAtt": ["DeadLetterQueue", "Arn"]
    }


def test_a_schedule_runs_the_outbox_publisher(template: dict[str, Any]) -> None:
    rules = resources_of(template, "AWS::Events::Rule")
    permissions = resources_of(template, "AWS::Lambda::Permission")
    (schedule,) = [r for r in rules.values() if "ScheduleExpression" in r]

    assert schedule["ScheduleExpression"].startswith("rate(")
    assert [t["Arn"] for t in schedule["Targets"]] == [{"Fn::GetAtt": ["PublisherFunction", "Arn"]}]
    assert any(
        p["FunctionName"] == {"Ref": "PublisherFunction"}
        and p["SourceArn"] == {"Fn::GetAtt": ["PublisherSchedule", "Arn"]}
        for p in permissions.values()
    )


def test_the_bucket_is_encrypted_private_tls_only_and_expires_session_copies(
    template: dict[str, Any],
) -> None:
    (bucket,) = resources_of(template, "AWS::S3::Bucket").values()
    (policy,) = resources_of(template, "AWS::S3::BucketPolicy").values()
    rules = {rule["Id"]: rule for rule in bucket["LifecycleConfiguration"]["Rules"]}
    (deny,) = policy["PolicyDocument"]["Statement"]

    (encryption,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == AwsSettings().sse
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    assert (deny["Effect"], deny["Condition"]) == (
        "Deny",
        {"Bool": {"aws:SecureTransport": "false"}},
    )
    assert rules["session-working-copies"]["Prefix"] == "sessions/"
    assert rules["session-working-copies"]["ExpirationInDays"] == {"Ref": "RetentionDays"}
    assert rules["incomplete-uploads"]["AbortIncompleteMultipartUpload"]
    assert "Prefix" not in rules["incomplete-uploads"]  # attachments' uploads too


def test_the_functions_may_resume_multipart_uploads_of_attachments(
    template: dict[str, Any],
) -> None:
    (policy,) = resources_of(template, "AWS::IAM::ManagedPolicy").values()
    (objects,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Sid"] == "Objects"]

    # PutObject covers creating, uploading and completing parts; these two are apart.
    assert {"s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"} <= set(objects["Action"])


def test_alarms_watch_the_dead_letters_the_oldest_job_and_each_functions_errors_and_throttles(
    template: dict[str, Any],
) -> None:
    watched = {
        (alarm["MetricName"], str(alarm["Dimensions"][0]["Value"]))
        for alarm in resources_of(template, "AWS::CloudWatch::Alarm").values()
        if alarm["AlarmActions"]
    }
    functions = [{"Ref": name} for name in HANDLERS]

    assert watched == {
        (
            "ApproximateNumberOfMessagesVisible",
            str({"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}),
        ),
        ("ApproximateAgeOfOldestMessage", str({"Fn::GetAtt": ["JobQueue", "QueueName"]})),
        *{("Errors", str(f)) for f in functions},
        *{("Throttles", str(f)) for f in functions},
    }


def test_no_role_is_granted_wildcard_actions_or_resources(template: dict[str, Any]) -> None:
    documents = [
        p["PolicyDocument"] for p in resources_of(template, "AWS::IAM::ManagedPolicy").values()
    ]
    for role in resources_of(template, "AWS::IAM::Role").values():
        documents += [policy["PolicyDocument"] for policy in role.get("Policies", [])]
    grants = [s for d in documents for s in d["Statement"] if s["Effect"] == "Allow"]

    actions = [
        a for s in grants for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    ]
    resources = [
        r
        for s in grants
        for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
    ]
    assert len(grants) >= 6
    assert [a for a in actions if "*" in a] == []
    assert "*" not in resources


def test_the_template_deploys_into_motos_cloudformation_and_the_server_runs_on_it(
    moto_endpoint: str, boto_session: Any
) -> None:
    def client(name: str) -> Any:
        return boto_session.client(name, endpoint_url=moto_endpoint, region_name="us-east-1")

    app_name = f"tpl-{uuid.uuid4().hex[:8]}"
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as package:
        package.writestr("backend_stub/__init__.py", "")
    client("s3").create_bucket(Bucket=f"{app_name}-code")
    client("s3").put_object(Bucket=f"{app_name}-code", Key="code.zip", Body=code.getvalue())
    parameters = {
        "AppName": app_name,
        "CodeBucket": f"{app_name}-code",
        "CodeKey": "code.zip",
        "JwksUrl": "https://idp.example/jwks.json",
        "JwtIssuer": "https://idp.example/",
        "JwtAudience": "migration-api",
    }
    cloudformation = client("cloudformation")
    with warnings.catch_warnings():
        # moto skips the types it cannot emulate (alarms, the HTTP API, resource
        # policies) with a warning, again when it lists the outputs; the tests above
        # check those resources statically.
        warnings.filterwarnings("ignore", "Tried to parse", UserWarning)
        cloudformation.create_stack(
            StackName=app_name,
            TemplateBody=TEMPLATE.read_text(),
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        )
        (stack,) = cloudformation.describe_stacks(StackName=app_name)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")

    worker = client("lambda").get_function_configuration(FunctionName=f"{app_name}-worker")
    environment = dict(worker["Environment"]["Variables"])
    settings = Settings.from_env({**environment, "MIGRATION_AWS_ENDPOINT_URL": moto_endpoint})
    table = client("dynamodb").describe_table(TableName=settings.aws.table)["Table"]
    sqs = client("sqs")
    jobs = sqs.get_queue_url(QueueName=settings.aws.queue)["QueueUrl"]
    redrive = sqs.get_queue_attributes(QueueUrl=jobs, AttributeNames=["RedrivePolicy"])

    assert worker["Handler"] == "backend_stub.lambda_handler.worker"
    assert table["KeySchema"] == table_definition(app_name)["KeySchema"]
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == [OUTBOX_INDEX]
    # moto's CloudFormation ignores TimeToLiveSpecification: the TTL is checked statically.
    assert settings.aws.dead_letter_queue in redrive["Attributes"]["RedrivePolicy"]
    client("s3").head_bucket(Bucket=settings.aws.bucket)

    with TestClient(create_app(settings)) as api:
        token = issue_token("alice", settings.jwt_secret)
        answer = api.get(
            "/api/migration/alice/detect", headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["canMigrate"] is True


def test_only_the_api_signs_attachment_urls_and_it_may_read_and_write_the_objects(
    template: dict[str, Any],
) -> None:
    functions = resources_of(template, "AWS::Lambda::Function")
    direct = {
        name: AwsSettings.from_env(
            {k: resolved(v, template) for k, v in props["Environment"]["Variables"].items()}
        ).blob_direct
        for name, props in functions.items()
    }
    (policy,) = resources_of(template, "AWS::IAM::ManagedPolicy").values()
    (objects,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Sid"] == "Objects"]

    assert direct == {name: name == "ApiFunction" for name in functions}
    assert {"s3:PutObject", "s3:GetObject"} <= set(objects["Action"])
    assert objects["Resource"] == {"Fn::Sub": "${Bucket.Arn}/*"}
