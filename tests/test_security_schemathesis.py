"""Schemathesis over the server's own OpenAPI schema, authenticated: whatever it sends,
valid or not, the answer is never a 5xx, and every refusal is problem+json.

Kept small for CI (25 cases per operation and mode); ``bench/chaos.py`` runs it with many
more, and more seeds.
"""

from __future__ import annotations

import pytest
from chaos_fuzz import run_schemathesis
from schemathesis.generation import GenerationMode

EXAMPLES = 25


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(mode: GenerationMode) -> None:
    report = run_schemathesis(mode, EXAMPLES)

    assert report.server_errors == []
    assert report.not_problems == []
    assert report.operations >= 9
    assert report.exercised >= report.operations // 2
    assert any(status >= 400 for status in report.statuses), report.statuses
    if mode is GenerationMode.POSITIVE:
        assert any(status < 300 for status in report.statuses), report.statuses
