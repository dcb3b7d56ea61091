"""Every fault scenario, with CI's seeds: the invariants hold after each (the larger
matrix, more seeds, is ``bench/chaos.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_harness import ServerProcess, spawn_server
from chaos_scenarios import SCENARIOS, Env, run

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
    pytest.param(name, seed, id=f"{name}-seed{seed}")
    for name, entry in SCENARIOS.items()
    for seed in entry.ci_seeds
]


@pytest.mark.parametrize(("name", "seed"), CASES)
def test_the_invariants_hold_after_the_fault(
    name: str, seed: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("chaos_server") if SCENARIOS[name].live_server else None

    report = run(name, Env(tmp_path, server), seed)

    assert report.ok, str(report)
