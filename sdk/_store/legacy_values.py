"""From the values of a legacy row to the fields of an item: its key and its time.

Keys. One text per source key, and never the same text for two different source keys,
whatever the values hold. A simple key keeps the plain text it always had (the integer
``7`` is ``"7"``, the text ``'hola'`` is ``"hola"``, a composite ``('es', 'hola')`` is
``"es:hola"``); a value that could be mistaken for another is written in a tagged form
starting with ``~``::

    >>> encode_key([7], [False]), encode_key(["es", "hola"], [False, False])
    ('7', 'es:hola')
    >>> encode_key(["x:y", "z"], [False, False]), encode_key(["x", "y:z"], [False, False])
    ('~tx%3Ay:z', 'x:~ty%3Az')
    >>> encode_key([1], [True]), encode_key(["1"], [True]), encode_key([1.0], [True])
    ('1', '~t1', '~f1.0')

Times. Milliseconds since the epoch from a number in a stated unit, or ISO 8601 text::

    >>> to_ms(1_700_000_000, "s"), to_ms("2024-05-01T10:00:00Z", "iso")
    (1700000000000, 1714557600000)
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["TIME_UNITS", "TimeUnit", "column_mixes_types", "encode_key", "to_ms"]

TimeUnit = Literal["s", "ms", "us", "ns", "iso"]
#: The units ``LegacyTable.time_unit`` accepts, and how many of each make a millisecond.
TIME_UNITS: dict[str, float] = {"s": 1e-3, "ms": 1.0, "us": 1e3, "ns": 1e6, "iso": 0.0}

_INT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_UNSAFE = re.compile(r"[%:\x00-\x1f]")  # what a tagged text escapes
_CONTROL = re.compile(r"[\x00-\x1f]")
#: No time in a learning app's data lies beyond this (ms): later ones are a wrong unit.
_LATEST = 7_258_118_400_000  # 2200-01-01
#: Below this a number is taken as seconds when no unit is stated, above as ms.
_GUESS_MS = 100_000_000_000


def column_mixes_types(declared: str, *, strict: bool = False) -> bool:
    """Whether a column of this declared type can hold both the integer ``1`` and the
    text ``'1'``: SQLite converts integer-like text to a number in a column of INTEGER,
    REAL or NUMERIC affinity, and numbers to text in one of TEXT affinity, but keeps
    both in an untyped (BLOB affinity) column, and in an ``ANY`` column of a STRICT table.

    >>> column_mixes_types("INTEGER"), column_mixes_types("varchar(20)"), column_mixes_types("")
    (False, False, True)
    """
    kind = declared.upper()
    if strict:
        return kind.strip() == "ANY"
    if "INT" in kind or any(word in kind for word in ("CHAR", "CLOB", "TEXT")):
        return False
    return "BLOB" in kind or not kind.strip()


def encode_key(values: Sequence[Any], mixed: Sequence[bool]) -> str:
    """The item key of a row whose key columns hold ``values``; ``mixed[i]`` tells
    whether column ``i`` can hold both an integer and integer-like text (see
    :func:`column_mixes_types`). Distinct values give distinct keys.

    >>> encode_key([b"\\x00\\xff"], [True]), encode_key([""], [False])
    ('~bAP8=', '~t')
    """
    if len(values) == 1:
        return _part(values[0], mixed[0], composite=False)
    return ":".join(
        _part(value, mixes, composite=True) for value, mixes in zip(values, mixed, strict=True)
    )


def _part(value: Any, mixed: bool, *, composite: bool) -> str:
    # The forms never overlap: integers are canonical decimals, plain text is neither a
    # canonical decimal (where the column also holds integers) nor starts with "~", and
    # every other value is "~" + a type letter + a text that encodes it one to one. In a
    # composite key no part holds ":", so the parts split back unambiguously.
    if type(value) is int:
        return str(value)
    if isinstance(value, str):
        if (
            value
            and value[0] != "~"
            and not (composite and ":" in value)
            and not (mixed and _INT_TEXT.fullmatch(value))
            and not _CONTROL.search(value)
        ):
            return value
        return "~t" + _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", value)
    if isinstance(value, float):
        return "~f" + repr(value)
    if isinstance(value, bytes):
        return "~b" + base64.urlsafe_b64encode(value).decode("ascii")
    raise TypeError(f"a key value must be an integer, real, text or blob, not {value!r}")


class TimeError(ValueError):
    """A value that is not a plausible time in the unit given; the message says why."""


def to_ms(value: Any, unit: TimeUnit | None) -> int:
    """Milliseconds since the epoch from ``value`` in ``unit``: ``s``, ``ms``, ``us``,
    ``ns`` (numbers, or text holding a number) or ``iso`` (ISO 8601 text, UTC unless it
    says otherwise). Without a unit, text that is not a number is read as ISO 8601 and
    a number as seconds below 10^11, milliseconds above. Raises :class:`TimeError` for
    anything else, and for a time before 1970 or after 2199 (a wrong unit, most often).

    >>> to_ms(1_700_000_000_000_000, "us")
    1700000000000
    >>> to_ms(1_700_000_000_000_000, None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sdk._store.legacy_values.TimeError: as milliseconds since the epoch that is the year 55840; ...
    """
    if isinstance(value, str) and unit != "iso":
        try:
            value = float(value.strip()) if unit is None else _number(value.strip())
        except ValueError:
            if unit is not None:
                raise TimeError(f"it is not a number of {_NAMES[unit]}") from None
            unit = "iso"
    if unit == "iso":
        if not isinstance(value, str):
            raise TimeError("it is not ISO 8601 text (time_unit='iso')")
        try:
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise TimeError("it is neither ISO 8601 text nor a number") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)  # naive: taken as UTC
        ms = round(parsed.timestamp() * 1000)
        stated = "ISO 8601"
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise TimeError("it is not a time")
        if unit is None:
            unit = "ms" if value >= _GUESS_MS else "s"
            stated = f"{_NAMES[unit]} since the epoch"
        else:
            stated = f"{_NAMES[unit]} since the epoch (time_unit={unit!r})"
        ms = _scaled(value, unit)
    if ms < 0:
        raise TimeError(f"as {stated} that is before 1970; state the unit the column holds")
    if ms >= _LATEST:
        raise TimeError(
            f"as {stated} that is the year {_year(ms)}; state the unit (time_unit='s', "
            "'ms', 'us' or 'ns')"
        )
    return ms


_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _scaled(value: float, unit: str) -> int:
    if isinstance(value, int):  # exact for integers, however large
        if unit == "s":
            return value * 1000
        divisor = {"ms": 1, "us": 1000, "ns": 1_000_000}[unit]
        return (value + divisor // 2) // divisor
    if value in (float("inf"), float("-inf")):
        return _LATEST if value > 0 else -1
    return round(value / TIME_UNITS[unit])


def _year(ms: int) -> int:
    return 1970 + ms // 31_556_952_000  # mean Gregorian year: near enough to name a year
