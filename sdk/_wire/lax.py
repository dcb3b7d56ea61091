"""pydantic's lax mode for scalars (pydantic-core's ``input_python.rs``), on the values
``json.loads`` makes: what an int, float, str or bool field accepts and what it makes of
it. A function answers the value or a :class:`Problem` saying why not::

    >>> SCALARS[int](" 1_000.0 ", False), SCALARS[bool]("off", False)
    (1000, False)
    >>> SCALARS[int](3.5, False).msg
    'Input should be a valid integer, got a number with a fractional part'
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

__all__ = ["SCALARS", "Problem"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a value is refused, in pydantic's words."""

    msg: str


# Rust's str::trim (Unicode White_Space): Python's isspace() also has \x1c-\x1f.
_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?\Z")
_FLOAT_TEXT = re.compile(r"[0-9A-Za-z_.+-]+\Z")
_I64 = 2**63


def _int(value: Any, strict: bool) -> Any:
    if isinstance(value, int) and not (strict and isinstance(value, bool)):
        return int(value)
    if strict:
        return Problem("Input should be a valid integer")
    if isinstance(value, float):
        if not math.isfinite(value):
            return Problem("Input should be a finite number")
        if value != int(value):
            return Problem("Input should be a valid integer, got a number with a fractional part")
        if not -_I64 < value < _I64:  # pydantic-core reads a float into an i64
            return Problem("Unable to parse input string as an integer, exceeded maximum size")
        return int(value)
    if isinstance(value, str):
        text = value.strip(_SPACE)
        if len(text) <= 4300 and _INT_TEXT.match(text):
            return int(text.partition(".")[0])
        return Problem("Input should be a valid integer, unable to parse string as an integer")
    return Problem("Input should be a valid integer")


def _float(value: Any, strict: bool) -> Any:
    if isinstance(value, (int, float)) and not (strict and isinstance(value, bool)):
        try:
            return float(value)
        except OverflowError:
            return Problem("Input should be a valid number")
    if isinstance(value, str) and not strict:
        text = value.strip(_SPACE)
        if _FLOAT_TEXT.match(text):
            try:
                return float(text)
            except ValueError:
                pass
        return Problem("Input should be a valid number, unable to parse string as a number")
    return Problem("Input should be a valid number")


def _str(value: Any, strict: bool) -> Any:
    return value if isinstance(value, str) else Problem("Input should be a valid string")


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _bool(value: Any, strict: bool) -> Any:
    if isinstance(value, bool):
        return value
    if not strict:
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE:
                return False
            return Problem("Input should be a valid boolean, unable to interpret input")
        if isinstance(value, int):
            return Problem("Input should be a valid boolean, unable to interpret input")
    return Problem("Input should be a valid boolean")


SCALARS: dict[Any, Callable[[Any, bool], Any]] = {int: _int, float: _float, str: _str, bool: _bool}
