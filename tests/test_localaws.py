"""The README's local AWS path (``sh localaws``) runs as written, from the repository's
root: moto's server through ``python -m backend_stub.localaws``, the API and a worker on
the aws backend, a sample store migrated and verified, everything stopped. And the
patches that launcher applies keep DynamoDB's behaviour (the suite's moto has them)."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from test_readme_path import ROOT, answers, free_port

ITEMS = 400  # the README's 20,000, fewer (bench/localaws.py measures the full size)


def localaws_block() -> str:
    (block,) = re.findall(r"```sh localaws\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return str(block)


def script(items: int) -> tuple[str, int, int]:
    """The README's block on free ports, migrating ``items`` items; (script, aws, api)."""
    aws, api = free_port(), free_port()
    block = localaws_block()
    for documented, port in (("5000", aws), ("8000", api)):
        assert f"127.0.0.1:{documented}" in block and f"--port {documented}" in block
        block = block.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{port}")
        block = block.replace(f"--port {documented}", f"--port {port}")
    assert "--items 20000" in block
    return block.replace("--items 20000", f"--items {items}"), aws, api


def run_block(
    text: str, folder: Path, *, timeout: float, started: Callable[[int], None] = lambda _: None
) -> tuple[int | None, str]:
    """Run ``text`` with ``bash -e`` as a newcomer would (``$TRY`` under ``folder``); its
    exit status (``None``: it ran out of time) and output. Whatever it started is killed
    when it ends, however it ends; ``started`` gets the shell's pid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIGRATION_", "AWS_"))}
    env["TMPDIR"] = str(folder)
    # Output to a file, not a pipe: servers left behind by a failure would hold a pipe
    # open. Its own process group, so that nothing is left behind.
    with tempfile.TemporaryFile("w+") as out:
        bash = subprocess.Popen(
            ["bash", "-e", "-c", text],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started(bash.pid)
        try:
            code: int | None = bash.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(bash.pid, signal.SIGKILL)
            bash.wait()
        out.seek(0)
        return code, out.read()


def test_the_readme_runs_a_migration_on_a_local_aws_and_stops_it(tmp_path):
    text, aws, api = script(ITEMS)

    code, out = run_block(text, tmp_path, timeout=180)

    assert code == 0, out
    assert "Traceback" not in out
    assert f"migrated {ITEMS + 1} items, verified: yes" in out  # sample adds a preference
    assert not answers(aws) and not answers(api)  # the path stopped its servers
    (folder,) = tmp_path.iterdir()  # $TRY: the logs of each process are there
    assert "Traceback" not in (folder / "worker.log").read_text()


# ----------------------------------------------------------------- the patched moto itself


def test_a_cancelled_transaction_leaves_every_item_as_it_was(aws_backend):
    dynamodb, table = aws_backend.resources.dynamodb, aws_backend.settings.table
    key = {"pk": {"S": "u"}, "sk": {"S": "a"}}
    dynamodb.put_item(TableName=table, Item={**key, "n": {"N": "1"}})
    items = [
        {
            "Update": {
                "TableName": table,
                "Key": key,
                "UpdateExpression": "SET n = :two",
                "ExpressionAttributeValues": {":two": {"N": "2"}},
            }
        },
        {"Put": {"TableName": table, "Item": {"pk": {"S": "u"}, "sk": {"S": "b"}}}},
        {
            "ConditionCheck": {
                "TableName": table,
                "Key": {"pk": {"S": "u"}, "sk": {"S": "c"}},
                "ConditionExpression": "attribute_exists(pk)",
            }
        },
    ]

    with pytest.raises(dynamodb.exceptions.TransactionCanceledException):
        dynamodb.transact_write_items(TransactItems=items)

    rows = dynamodb.query(
        TableName=table,
        KeyConditionExpression="pk = :u",
        ExpressionAttributeValues={":u": {"S": "u"}},
    )["Items"]
    assert rows == [{**key, "n": {"N": "1"}}]


def test_a_partition_read_page_by_page_yields_each_item_once_in_order(aws_backend):
    dynamodb, table = aws_backend.resources.dynamodb, aws_backend.settings.table
    keys = [f"k{n:03d}" for n in random.Random(3).sample(range(250), 250)]
    for sk in keys:
        dynamodb.put_item(TableName=table, Item={"pk": {"S": "p"}, "sk": {"S": sk}})
    dynamodb.put_item(TableName=table, Item={"pk": {"S": "other"}, "sk": {"S": "k000"}})

    def pages(forward: bool) -> list[str]:
        found: list[str] = []
        start: dict[str, object] = {}
        while True:
            answer = dynamodb.query(
                TableName=table,
                KeyConditionExpression="pk = :p",
                ExpressionAttributeValues={":p": {"S": "p"}},
                Limit=40,
                ScanIndexForward=forward,
                **start,
            )
            found += [row["sk"]["S"] for row in answer["Items"]]
            if "LastEvaluatedKey" not in answer:
                return found
            start = {"ExclusiveStartKey": answer["LastEvaluatedKey"]}

    assert pages(forward=True) == sorted(keys)
    assert pages(forward=False) == sorted(keys, reverse=True)


def test_a_part_sent_to_an_upload_completed_meanwhile_is_refused_as_s3_refuses_it(aws_backend):
    # Two devices uploading one attachment race this way: the second one's part arrives
    # after the first one's complete. S3 answers NoSuchUpload, which the server handles;
    # moto alone failed with a KeyError (a 500), so the race test failed now and then.
    s3, bucket = aws_backend.resources.s3, aws_backend.settings.bucket
    upload = s3.create_multipart_upload(Bucket=bucket, Key="race/blob")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="race/blob", UploadId=upload, PartNumber=1, Body=b"x")
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="race/blob",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )

    with pytest.raises(s3.exceptions.NoSuchUpload):
        s3.upload_part(Bucket=bucket, Key="race/blob", UploadId=upload, PartNumber=2, Body=b"y")
