"""The retry engine: backoff, caps and Retry-After, with time injected (nothing sleeps)."""

from __future__ import annotations

import math
import random
from email.utils import formatdate
from typing import Any

import pytest

from sdk._errors import ConfigurationError
from sdk._transport.retry import (
    Retrier,
    RetryDecision,
    RetryPolicy,
    parse_http_date,
    parse_retry_after,
)


class Clock:
    """A monotonic clock that only moves when something sleeps on it (or a test moves it)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def retrier(clock: Clock | None = None, **policy: Any) -> Retrier:
    clock = clock or Clock()
    return Retrier(RetryPolicy(**policy), sleep=clock.sleep, clock=clock)


# ---------------------------------------------------------------------- the policy


def test_the_default_policy_matches_the_documented_numbers() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.timeout, policy.initial) == (8, 120.0, 0.25)
    assert (policy.max_delay, policy.jitter, policy.max_retry_after) == (30.0, 0.5, 300.0)
    assert policy.retries


def test_the_policy_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        RetryPolicy().attempts = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        pytest.param({"attempts": 0}, "attempts", id="zero-attempts"),
        pytest.param({"attempts": -1}, "attempts", id="negative-attempts"),
        pytest.param({"attempts": 2.5}, "attempts", id="fractional-attempts"),
        pytest.param({"attempts": True}, "attempts", id="bool-attempts"),
        pytest.param({"timeout": -1.0}, "timeout", id="negative-timeout"),
        pytest.param({"timeout": math.nan}, "timeout", id="nan-timeout"),
        pytest.param({"timeout": "10"}, "timeout", id="string-timeout"),
        pytest.param({"initial": -0.1}, "initial", id="negative-initial"),
        pytest.param({"max_delay": math.inf}, "max_delay", id="infinite-max-delay"),
        pytest.param({"jitter": -1.0}, "jitter", id="negative-jitter"),
        pytest.param({"max_retry_after": math.nan}, "max_retry_after", id="nan-retry-after-cap"),
        pytest.param({"initial": 5.0, "max_delay": 1.0}, "initial", id="initial-over-max"),
    ],
)
def test_an_invalid_policy_is_a_configuration_error_naming_the_field(
    kwargs: dict[str, object], needle: str
) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_an_infinite_time_budget_is_allowed() -> None:
    assert RetryPolicy(timeout=math.inf).timeout == math.inf


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(RetryPolicy.none(), id="none"),
        pytest.param(RetryPolicy(attempts=1), id="one-attempt"),
    ],
)
def test_a_single_attempt_policy_never_retries(policy: RetryPolicy) -> None:
    clock = Clock()
    run = Retrier(policy, sleep=clock.sleep, clock=clock).start()
    decision = run.next_delay()
    assert not decision.retry
    assert "1 attempt made" in decision.reason
    assert not policy.retries


# ---------------------------------------------------------------------- backoff


def test_backoff_doubles_from_initial_and_is_capped_by_max_delay() -> None:
    run = retrier(attempts=10, initial=1.0, max_delay=10.0, jitter=0.0, timeout=1e6).start()
    delays = [run.next_delay().delay for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_adds_up_to_jitter_seconds_and_varies() -> None:
    engine = Retrier(RetryPolicy(initial=1.0, jitter=0.5, max_delay=100.0), rng=random.Random(1234))
    waits = [engine.backoff(1) for _ in range(50)]
    assert all(1.0 <= w <= 1.5 for w in waits)
    assert len(set(waits)) > 40


def test_jitter_never_pushes_the_wait_past_max_delay() -> None:
    engine = Retrier(RetryPolicy(initial=1.0, jitter=5.0, max_delay=2.0), rng=random.Random(0))
    assert all(engine.backoff(n) <= 2.0 for n in range(1, 20))


def test_a_huge_attempt_number_does_not_overflow() -> None:
    engine = Retrier(RetryPolicy(initial=1.0, jitter=0.0, max_delay=30.0))
    assert engine.backoff(100_000) == 30.0


def test_the_attempts_cap_stops_after_attempts_minus_one_retries() -> None:
    run = retrier(attempts=3, timeout=1e6).start()
    decisions = [run.next_delay() for _ in range(3)]
    assert [d.retry for d in decisions] == [True, True, False]
    assert "3 attempts made" in decisions[-1].reason


def test_the_time_budget_shortens_the_last_wait_then_stops() -> None:
    clock = Clock()
    engine = retrier(clock, attempts=100, timeout=10.0, initial=4.0, jitter=0.0, max_delay=100.0)
    run = engine.start()
    waits = []
    while (decision := run.next_delay()).retry:
        run.wait(decision)
        waits.append(decision.delay)
    # 4 + 6 (8 wanted, 6 left) exhausts the 10 s budget exactly.
    assert waits == [4.0, 6.0]
    assert clock.slept == [4.0, 6.0]
    assert "budget of 10 s is spent" in decision.reason


def test_time_spent_inside_attempts_counts_against_the_budget() -> None:
    clock = Clock()
    run = retrier(clock, timeout=10.0, initial=1.0, jitter=0.0).start()
    clock.now = 9.5  # the attempt itself hung for 9.5 s
    assert run.next_delay().delay == 0.5
    clock.now = 10.0
    assert not run.next_delay().retry


def test_wait_sleeps_through_the_injected_sleep_only() -> None:
    clock = Clock()
    run = retrier(clock).start()
    run.wait(RetryDecision(2.5, "backoff"))
    run.wait(RetryDecision(None, "gave up"))
    assert clock.slept == [2.5]


# ---------------------------------------------------------------------- Retry-After


def test_retry_after_replaces_the_backoff() -> None:
    run = retrier(initial=0.25, jitter=0.0).start()
    decision = run.next_delay(retry_after=7.0)
    assert (decision.delay, decision.reason) == (7.0, "Retry-After")


def test_a_negative_retry_after_means_now() -> None:
    assert retrier().start().next_delay(retry_after=-30.0).delay == 0.0


def test_a_huge_retry_after_is_clamped_to_max_retry_after() -> None:
    run = retrier(timeout=10_000.0, max_retry_after=300.0).start()
    assert run.next_delay(retry_after=1e12).delay == 300.0


def test_a_retry_after_beyond_the_remaining_budget_gives_up() -> None:
    clock = Clock()
    run = retrier(clock, timeout=120.0).start()
    clock.now = 100.0
    decision = run.next_delay(retry_after=60.0)
    assert not decision.retry
    assert "asked to retry after 60 s" in decision.reason
    assert "20.0 s of the 120 s retry budget remain" in decision.reason


def test_a_clamped_retry_after_still_beyond_the_budget_gives_up() -> None:
    run = retrier(timeout=120.0, max_retry_after=300.0).start()
    assert not run.next_delay(retry_after=1e9).retry


def test_the_attempts_cap_wins_over_retry_after() -> None:
    run = retrier(attempts=2).start()
    assert run.next_delay(retry_after=1.0).retry
    assert not run.next_delay(retry_after=1.0).retry


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "server_now", "expected"),
    [
        pytest.param("120", None, 120.0, id="seconds"),
        pytest.param("  3 ", None, 3.0, id="seconds-with-spaces"),
        pytest.param("1.5", None, 1.5, id="fractional-seconds"),
        pytest.param("0", None, 0.0, id="zero"),
        pytest.param("-5", None, -5.0, id="negative-seconds"),
        pytest.param("9" * 400, None, 1e300, id="overflowing-seconds"),
        pytest.param(formatdate(NOW + 90, usegmt=True), None, 90.0, id="http-date"),
        pytest.param(formatdate(NOW - 90, usegmt=True), None, -90.0, id="http-date-in-the-past"),
        pytest.param(
            formatdate(NOW + 90, usegmt=True), NOW + 60, 30.0, id="http-date-against-server-date"
        ),
        pytest.param(None, None, None, id="absent"),
        pytest.param("", None, None, id="empty"),
        pytest.param("soon", None, None, id="garbage"),
        pytest.param("nan", None, None, id="nan"),
        pytest.param("inf", None, None, id="inf"),
        pytest.param("12 seconds", None, None, id="seconds-with-unit"),
        pytest.param("Mon, 99 Foo 2024 99:99:99 GMT", None, None, id="broken-date"),
    ],
)
def test_retry_after_values_are_parsed_or_ignored(
    value: str | None, server_now: float | None, expected: float | None
) -> None:
    assert parse_retry_after(value, now=NOW, server_now=server_now) == expected


def test_an_http_date_without_zone_is_read_as_gmt() -> None:
    assert parse_http_date("Thu, 01 Jan 1970 00:00:10 -0000") == 10.0
