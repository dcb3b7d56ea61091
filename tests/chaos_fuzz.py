"""Generated hostile input: schemathesis over the server's OpenAPI schema, and byte-flipped
stores. Shared by the CI tests (small counts) and ``bench/chaos.py`` (large ones).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from server_fixtures import TestClient, items_of, make_plan

from backend_stub import Settings, create_app, issue_token
from backend_stub.storage.sqlite import SQLiteStorage
from sdk.contract import PROBLEM_CONTENT_TYPE, Limits

LIMITS = Limits(max_batch_items=10, max_batch_bytes=64 * 1024)


@dataclasses.dataclass
class FuzzReport:
    requests: int = 0
    operations: int = 0
    exercised: int = 0  # operations for which the mode could generate a case
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)
    server_errors: list[str] = dataclasses.field(default_factory=list)
    not_problems: list[str] = dataclasses.field(default_factory=list)


def run_schemathesis(mode: GenerationMode, examples: int, *, seed: int = 0) -> FuzzReport:
    """Every operation of the real app's schema, authenticated as alice, half the time
    aimed at one of her real sessions; ``examples`` cases per operation."""
    storage = SQLiteStorage.in_memory()
    config = Settings(limits=LIMITS)
    app = create_app(config, storage=storage)
    token = issue_token("alice", config.jwt_secret)
    report = FuzzReport()
    try:
        with TestClient(app) as client:
            answer = client.post(
                "/api/migration/alice/start",
                json={
                    "migrationId": "mig-schemathesis",
                    "deviceId": "d1",
                    "dataVersion": 1,
                    "manifest": make_plan(items_of(6), batch_size=2).manifest,
                },
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 200, answer.text
            session_id = answer.json()["sessionId"]
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            report.operations += 1
            operation = result.ok()
            strategy = operation.as_strategy(
                generation_mode=mode, headers={"Authorization": f"Bearer {token}"}
            )
            call = _caller(strategy, examples, seed, session_id, report)
            try:
                call()
            except Unsatisfiable:
                # Nothing in this operation can be made invalid (only free-text path
                # parameters, say): the negative mode has no case to send.
                continue
            report.exercised += 1
    finally:
        storage.close()
    return report


def _caller(
    strategy: Any, examples: int, seed: int, session_id: str, report: FuzzReport
) -> Callable[[], None]:
    @given(case=strategy, real_ids=st.booleans())
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=seed == 0,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def call(case: schemathesis.Case, real_ids: bool) -> None:
        if "userId" in (case.path_parameters or {}):
            case.path_parameters["userId"] = "alice"  # type: ignore[index]
        if real_ids and "sessionId" in (case.path_parameters or {}):
            case.path_parameters["sessionId"] = session_id  # type: ignore[index]
        response = case.call()
        report.requests += 1
        status = response.status_code
        report.statuses[status] = report.statuses.get(status, 0) + 1
        where = f"{case.method} {case.formatted_path}"
        if status >= 500:
            report.server_errors.append(f"{where}: {status} {response.text[:200]}")
        elif status >= 400 and response.headers.get("content-type") != [PROBLEM_CONTENT_TYPE]:
            report.not_problems.append(f"{where}: {status} {response.headers.get('content-type')}")

    if seed:
        call = _seeded(call, seed)
    return call


def _seeded(call: Callable[[], None], seed: int) -> Callable[[], None]:
    from hypothesis import seed as hypothesis_seed

    return hypothesis_seed(seed)(call)  # type: ignore[no-any-return]


def mutate(pristine: bytes, rng: random.Random) -> bytes:
    """One to a few bytes flipped, anywhere in the file."""
    mutant = bytearray(pristine)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        mutant[rng.randrange(len(mutant))] ^= rng.randrange(1, 256)
    return bytes(mutant)
