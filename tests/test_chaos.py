"""Every fault scenario, with CI's seeds: the invariants hold after each (the larger
matrix, more seeds, is ``bench/chaos.py``).

The scenarios that run against a server process also run on the aws backend (the API
and a worker on moto's server, ``tests/aws_servers.py``): a representative few here,
all of them in ``bench/chaos.py --backend aws``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_harness import ServerProcess, spawn_server
from chaos_scenarios import AWS_CI_SCENARIOS, SCENARIOS, Env, run

from sdk import _failpoints


@pytest.fixture(scope="module")
def chaos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = spawn_server(tmp_path_factory.mktemp("chaos-server"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_failpoints_left() -> Iterator[None]:
    yield
    _failpoints.reset()


CASES = [
    pytest.param(name, seed, "sqlite", id=f"{name}-seed{seed}")
    for name, entry in SCENARIOS.items()
    for seed in entry.ci_seeds
] + [
    pytest.param(name, seed, "aws", id=f"aws-{name}-seed{seed}")
    for name in AWS_CI_SCENARIOS
    for seed in SCENARIOS[name].ci_seeds
]


@pytest.mark.parametrize(("name", "seed", "backend"), CASES)
def test_the_invariants_hold_after_the_fault(
    name: str, seed: int, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fixture = "chaos_server" if backend == "sqlite" else "aws_live_server"
    server = request.getfixturevalue(fixture) if SCENARIOS[name].live_server else None

    report = run(name, Env(tmp_path, server), seed)

    assert report.ok, str(report)
