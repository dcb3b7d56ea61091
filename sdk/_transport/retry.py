"""When to try again, and how long to wait first.

:class:`RetryPolicy` is the configuration (stamina-style: exponential backoff with jitter,
capped by a number of attempts and by a total time budget). :class:`Retrier` turns it into
waits; time, sleep and randomness are injected so tests never wait::

    >>> slept = []
    >>> retrier = Retrier(RetryPolicy(initial=1.0, jitter=0.0), sleep=slept.append,
    ...                   clock=lambda: 0.0)
    >>> run = retrier.start()
    >>> [run.next_delay().delay for _ in range(3)]
    [1.0, 2.0, 4.0]
    >>> run.next_delay(retry_after=7.0).delay
    7.0

The engine knows nothing about HTTP: the transport decides *what* is worth retrying and hands
over a parsed ``Retry-After`` (see :func:`parse_retry_after`).
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import ConfigurationError

__all__ = [
    "Retrier",
    "RetryDecision",
    "RetryPolicy",
    "RetryRun",
    "parse_http_date",
    "parse_retry_after",
]

# Past this exponent the backoff is far beyond any sane max_delay anyway; stopping here keeps
# float arithmetic from overflowing when someone configures a very large number of attempts.
_MAX_EXPONENT = 64

# RFC 9110 allows only digits; a sign and a fraction are tolerated because servers send them,
# but "nan", "inf" and the like that float() would accept are garbage, not delays.
_SECONDS = re.compile(r"\s*[+-]?\d+(?:\.\d+)?\s*")


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How hard to try before giving up. Keyword-only and immutable.

    ``attempts`` counts every try, the first included; ``timeout`` is the total budget in
    seconds from the first try; the wait before retry *n* is ``initial * 2 ** (n - 1)`` plus up
    to ``jitter`` random seconds, at most ``max_delay``. A server's ``Retry-After`` replaces the
    backoff, clamped to ``max_retry_after``.

    >>> RetryPolicy(attempts=3, timeout=10.0).attempts
    3
    >>> RetryPolicy.none().attempts
    1
    >>> RetryPolicy(attempts=0)
    Traceback (most recent call last):
    ...
    sdk._errors.ConfigurationError: RetryPolicy.attempts must be an integer >= 1, got 0
    """

    attempts: int = 8
    timeout: float = 120.0
    initial: float = 0.25
    max_delay: float = 30.0
    jitter: float = 0.5
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigurationError(
                f"RetryPolicy.attempts must be an integer >= 1, got {self.attempts!r}"
            )
        if self.attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.attempts must be an integer >= 1, got {self.attempts!r}"
            )
        for name in ("timeout", "initial", "max_delay", "jitter", "max_retry_after"):
            value = getattr(self, name)
            valid = isinstance(value, (int, float)) and not isinstance(value, bool)
            # An infinite total budget is a meaningful "no time cap"; elsewhere it is a typo.
            if (
                not valid
                or math.isnan(value)
                or value < 0
                or (math.isinf(value) and name != "timeout")
            ):
                kind = "a number" if name == "timeout" else "a finite number"
                raise ConfigurationError(
                    f"RetryPolicy.{name} must be {kind} of seconds >= 0, got {value!r}"
                )
        if self.initial > self.max_delay:
            raise ConfigurationError(
                f"RetryPolicy.initial ({self.initial!r}) must not exceed "
                f"max_delay ({self.max_delay!r})"
            )

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that tries exactly once.

        >>> RetryPolicy.none().retries
        False
        """
        return cls(attempts=1)

    @property
    def retries(self) -> bool:
        """Whether this policy ever tries a second time.

        >>> RetryPolicy().retries
        True
        """
        return self.attempts > 1


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt: wait ``delay`` seconds and retry, or give up
    (``delay is None``). ``reason`` says which rule decided, for logs and error messages.

    >>> RetryDecision(None, "3 attempts made").retry
    False
    """

    delay: float | None
    reason: str

    @property
    def retry(self) -> bool:
        """True when the caller should wait ``delay`` and try again.

        >>> RetryDecision(0.5, "backoff").retry
        True
        """
        return self.delay is not None


class Retrier:
    """The engine behind a :class:`RetryPolicy`, with its time sources injected.

    One retrier serves many calls, from several threads if need be; each call takes its own
    :class:`RetryRun` from :meth:`start`.

    >>> Retrier(RetryPolicy(initial=0.5, jitter=0.0)).backoff(3)
    2.0
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy if policy is not None else RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()

    def start(self) -> RetryRun:
        """Begin one call: the time budget counts from now.

        >>> Retrier(RetryPolicy.none()).start().next_delay().retry
        False
        """
        return RetryRun(self, self._clock())

    def backoff(self, failures: int) -> float:
        """The exponential wait (with jitter) after ``failures`` failed attempts, at most
        ``max_delay``; the time budget is not applied here.

        >>> Retrier(RetryPolicy(initial=1.0, max_delay=5.0, jitter=0.0)).backoff(10)
        5.0
        """
        p = self.policy
        exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
        jitter = self._rng.uniform(0.0, p.jitter) if p.jitter else 0.0
        return min(p.max_delay, p.initial * 2.0**exponent + jitter)


class RetryRun:
    """The retry state of one call: how many attempts failed and how much budget is left.

    >>> now = [0.0]
    >>> run = Retrier(RetryPolicy(timeout=10.0, initial=4.0, jitter=0.0),
    ...               clock=lambda: now[0]).start()
    >>> run.next_delay().delay
    4.0
    >>> now[0] = 9.0
    >>> run.next_delay().delay  # 8 s of backoff, but only 1 s of budget left
    1.0
    """

    def __init__(self, retrier: Retrier, started: float) -> None:
        self._retrier = retrier
        self._started = started
        self.failures = 0

    @property
    def elapsed(self) -> float:
        """Seconds since the call started.

        >>> Retrier(clock=lambda: 5.0).start().elapsed
        0.0
        """
        return self._retrier._clock() - self._started

    @property
    def remaining(self) -> float:
        """Seconds of the time budget left (never negative).

        >>> Retrier(RetryPolicy(timeout=3.0), clock=lambda: 0.0).start().remaining
        3.0
        """
        return max(0.0, self._retrier.policy.timeout - self.elapsed)

    def next_delay(self, retry_after: float | None = None) -> RetryDecision:
        """Record one failed attempt and decide whether, and after how long, to retry.

        ``retry_after`` is the server's requested wait in seconds (already parsed); when
        given it replaces the backoff. A negative one means "now"; one beyond
        ``max_retry_after`` is clamped; one that still exceeds the remaining budget means
        giving up, since retrying sooner than the server asked is pointless.

        >>> run = Retrier(RetryPolicy(timeout=60.0), clock=lambda: 0.0).start()
        >>> run.next_delay(retry_after=-3.0).delay
        0.0
        >>> run.next_delay(retry_after=90.0).retry
        False
        """
        self.failures += 1
        policy = self._retrier.policy
        attempts = self.failures
        if attempts >= policy.attempts:
            return RetryDecision(
                None,
                f"{attempts} attempt{'s' if attempts != 1 else ''} made "
                f"(RetryPolicy.attempts={policy.attempts})",
            )
        elapsed = self.elapsed
        remaining = policy.timeout - elapsed
        if remaining <= 0:
            return RetryDecision(
                None,
                f"the retry budget of {policy.timeout:g} s is spent "
                f"({attempts} attempts in {elapsed:.1f} s)",
            )
        if retry_after is not None:
            wanted = min(max(retry_after, 0.0), policy.max_retry_after)
            if wanted > remaining:
                return RetryDecision(
                    None,
                    f"the server asked to retry after {wanted:g} s, but only "
                    f"{remaining:.1f} s of the {policy.timeout:g} s retry budget remain",
                )
            return RetryDecision(wanted, "Retry-After")
        return RetryDecision(min(self._retrier.backoff(attempts), remaining), "backoff")

    def wait(self, decision: RetryDecision) -> None:
        """Sleep for a decision's delay (through the injected ``sleep``).

        >>> slept = []
        >>> Retrier(sleep=slept.append).start().wait(RetryDecision(1.5, "backoff"))
        >>> slept
        [1.5]
        """
        if decision.delay is not None:
            self._retrier._sleep(decision.delay)


def parse_retry_after(
    value: str | None, *, now: float, server_now: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or ``None`` if it means nothing.

    Accepts delay-seconds and HTTP dates. ``now`` is the local wall clock (epoch seconds);
    ``server_now`` is the response's own ``Date``, when it has one. A date is measured against
    the server's clock when possible, because the device's clock may be minutes off and the
    server's date is what the server meant. Negative results are returned as they are; the
    engine treats them as zero.

    >>> parse_retry_after("120", now=0.0)
    120.0
    >>> parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", now=30.0)
    30.0
    >>> parse_retry_after("soon", now=0.0) is None
    True
    """
    if value is None:
        return None
    if _SECONDS.fullmatch(value):
        seconds = float(value)
        # A digit string long enough to overflow to infinity is still just "very long".
        return seconds if math.isfinite(seconds) else math.copysign(1e300, seconds)
    when = parse_http_date(value)
    if when is None:
        return None
    return when - (server_now if server_now is not None else now)


def parse_http_date(value: str | None) -> float | None:
    """Epoch seconds of an HTTP date (``Date``, ``Retry-After``), or ``None`` if invalid.

    >>> parse_http_date("Thu, 01 Jan 1970 00:00:10 GMT")
    10.0
    >>> parse_http_date("yesterday") is None
    True
    """
    if not value:
        return None
    # Imported here: email.utils costs ~7 ms, and auto_migrate()'s start-up loads this module.
    from datetime import timezone
    from email.utils import parsedate_to_datetime

    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        # RFC 9110 dates are always GMT; a naive result means the zone was "-0000" or missing.
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
