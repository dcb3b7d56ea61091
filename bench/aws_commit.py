"""A whole migration through the aws backend on moto: how long is the longest request?

The SDK migrates a store of N items through the real app (in-process, over
``httpx``'s ASGI transport) on moto's server (loopback, serialized and patched as in
the tests); the worker runs in a thread. The bench prints the longest request, the
longest job of the worker (one batch, or one slice of the commit), the total time and
the AWS calls each side made, and an estimate of the longest request and job on AWS
from their call counts (moto's time per call says nothing about AWS's)::

    .venv/bin/python bench/aws_commit.py --items 20000
    .venv/bin/python bench/aws_commit.py --items 50000 --slice 2000

Nothing here asserts a time; the figures are for the note.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import boto3  # noqa: E402
import pytest  # noqa: E402
from aws_fixtures import CREDENTIALS  # noqa: E402
from common import fill_store  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from backend_stub import Settings, create_app, issue_token, localaws  # noqa: E402
from backend_stub.settings import AwsSettings  # noqa: E402
from backend_stub.storage.aws import AwsStorage  # noqa: E402
from backend_stub.storage.aws_resources import AwsResources, provision  # noqa: E402
from backend_stub.storage.aws_slices import load_record  # noqa: E402
from backend_stub.worker import Worker  # noqa: E402
from sdk import MigrationClient, MigrationOptions  # noqa: E402

#: Typical in-region latency of one call on AWS (p50, ms), for the estimate.
AWS_MS = {"dynamodb": 8.0, "s3": 25.0, "sqs": 10.0, "eventbridge": 15.0}


class Calls:
    """AWS calls made through one boto3 session, by service and by thread."""

    def __init__(self, session: Any) -> None:
        self.total: collections.Counter[str] = collections.Counter()
        self.by_thread: dict[int, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        session.events.register("before-call", self._count)

    def _count(self, model: Any, **kwargs: Any) -> None:
        service = model.service_model.service_name
        self.total[service] += 1
        self.by_thread[threading.get_ident()][service] += 1

    def mark(self) -> collections.Counter[str]:
        """The calls of the current thread so far."""
        return collections.Counter(self.by_thread[threading.get_ident()])


def aws_ms(calls: collections.Counter[str]) -> float:
    return sum(AWS_MS.get(service, 10.0) * count for service, count in calls.items())


@contextlib.contextmanager
def moto() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        for target, name, value in localaws.patches():  # the README's local AWS
            patch.setattr(target, name, value)
        server = localaws.local_aws()
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--slice", type=int, default=2000, help="MIGRATION_AWS_COMMIT_SLICE")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-aws-commit-"))
    store = fill_store(work / "store.sqlite3", args.items)
    with moto() as endpoint:
        suffix = uuid.uuid4().hex[:8]
        aws = AwsSettings(
            endpoint_url=endpoint,
            table=f"b-{suffix}",
            bucket=f"b-{suffix}",
            queue=f"b-{suffix}",
            dead_letter_queue=f"d-{suffix}",
            event_bus=f"b-{suffix}",
            retry_delay=0.0,
            commit_slice=args.slice,
        )
        api_session = boto3.session.Session(region_name="us-east-1")
        worker_session = boto3.session.Session(region_name="us-east-1")
        provision(AwsResources(aws, session=api_session))
        api_calls, worker_calls = Calls(api_session), Calls(worker_session)
        settings = Settings(backend="aws", aws=aws)
        storage = AwsStorage(AwsResources(aws, session=api_session))
        worker = Worker(
            AwsStorage(AwsResources(aws, session=worker_session)),
            settings,
            wait_seconds=0,
            idle_wait=0.005,
        )
        jobs: list[tuple[float, str, collections.Counter[str]]] = []
        handle = worker.handle

        # The bench's own reads (which step a commit job runs) go through a third session.
        probe = AwsStorage(
            AwsResources(aws, session=boto3.session.Session(region_name="us-east-1"))
        )
        steps: collections.Counter[str] = collections.Counter()

        # The busiest job of each commit step: (calls, seconds on moto, calls by service).
        by_step: dict[str, tuple[int, float, collections.Counter[str]]] = {}

        def timed_handle(body: str, receive_count: int) -> Any:
            kind, step = "batch", None
            if "CommitSession" in body:
                kind = "commit slice"
                record = load_record(probe, json.loads(body)["sessionId"])
                step = record.step if record else "-"
                steps[step] += 1
            before, started = worker_calls.mark(), time.perf_counter()
            outcome = handle(body, receive_count)
            seconds, calls = time.perf_counter() - started, worker_calls.mark() - before
            jobs.append((seconds, kind, calls))
            if step is not None and sum(calls.values()) >= by_step.get(step, (0,))[0]:
                by_step[step] = (sum(calls.values()), seconds, calls)
            return outcome

        worker.handle = timed_handle  # type: ignore[method-assign]
        requests: list[tuple[float, str, collections.Counter[str]]] = []
        app = create_app(settings, storage=storage)

        async def timed_app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            before = collections.Counter(api_calls.total)
            await app(scope, receive, send)
            # Calls counted while it ran: its own where nothing else runs (complete).
            label = f"{scope['method']} {'/'.join(scope['path'].rsplit('/', 2)[-2:])}"
            calls = collections.Counter(api_calls.total) - before
            requests.append((time.perf_counter() - started, label, calls))

        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,))
        thread.start()
        started = time.perf_counter()
        try:
            with (
                TestClient(timed_app, base_url="http://testserver") as http,
                MigrationClient(
                    http_client=http,
                    user_id="bench",
                    token=issue_token("bench", settings.jwt_secret),
                    store_path=store,
                    options=MigrationOptions(batch_size=args.batch_size, cache_dir=work / "c"),
                ) as client,
            ):
                result = client.migrate()
            migrated = time.perf_counter() - started
            # The roll-forward goes on after the session completed (invisible to
            # readers): count its jobs and calls too.
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                record = load_record(probe, result.session_id)
                if record is not None and record.step == "done":
                    break
                stop.wait(0.5)
        finally:
            stop.set()
            thread.join()
        total = time.perf_counter() - started
    print(f"items {args.items}, batch size {args.batch_size}, commit slice {args.slice}")
    print(
        f"outcome {result.outcome.value}, verified {result.verified}, migrate() {migrated:.1f} s,"
        f" until the roll-forward was done {total:.1f} s"
    )
    longest = max(requests)
    print(f"requests {len(requests)}; longest {longest[0]:.2f} s ({longest[1]})")
    completes = [r for r in requests if "complete" in r[1]]
    for seconds, _, calls in completes:
        print(
            f"complete: {seconds:.3f} s on moto, {sum(calls.values())} calls {dict(calls)}"
            f" = ~{aws_ms(calls):.0f} ms on AWS"
        )
    for kind in ("batch", "commit slice"):
        mine = [j for j in jobs if j[1] == kind]
        if not mine:
            continue
        slowest = max(mine, key=lambda j: j[0])
        busiest = max(mine, key=lambda j: sum(j[2].values()))
        print(
            f"{kind}: {len(mine)} jobs; longest {slowest[0]:.2f} s on moto; most calls"
            f" {sum(busiest[2].values())} {dict(busiest[2])} = ~{aws_ms(busiest[2]):.0f} ms on AWS"
        )
    print(f"commit jobs by step: {dict(steps)}")
    for step, (count, seconds, calls) in by_step.items():
        print(
            f"  busiest {step} job: {count} calls {dict(calls)} = ~{aws_ms(calls):.0f} ms on"
            f" AWS ({seconds:.2f} s on moto)"
        )
    print(f"AWS calls by the API: {sum(api_calls.total.values())} {dict(api_calls.total)}")
    print(f"AWS calls by the worker: {sum(worker_calls.total.values())} {dict(worker_calls.total)}")


if __name__ == "__main__":
    main()
