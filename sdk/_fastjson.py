"""Parse and canonically encode item data fast when orjson is installed; the stdlib otherwise.

The hot paths (the snapshot's per-row check, the server's per-item encoding) parse JSON
and encode it canonically, millions of times. orjson does both several times faster than
the stdlib, but it is a compiled wheel the SDK never requires (the ``fast`` extra), and
it formats a few values differently. So it is used only where its answer is provably the
stdlib's, and the stdlib decides everything else:

- encoding: orjson writes small floats as ``0.00001`` or ``1e-7`` where Python writes
  ``1e-05`` and ``1e-07``, and NaN as ``null`` where the canonical encoding refuses it. An
  output holding ``e-``, ``0.0000`` or ``null`` (in a string or not) is encoded again by
  the stdlib; so is anything orjson refuses (integers beyond 64 bits, deep nesting,
  surrogates). Every other float prints the same in both (shortest round-trip repr).
- parsing: orjson reads integers beyond 64 bits as floats, so a text holding 19 digits in
  a row is read by the stdlib; so is whatever orjson refuses (NaN tokens, lone
  surrogates), and the stdlib decides what the input means.

Only values a JSON parser produced go through :func:`canonical` (orjson would also
serialize enums, UUIDs and dataclasses, which the canonical encoding refuses).

    >>> canonical(loads('{"b": 1e-05, "a": [true, null]}'))
    '{"a":[true,null],"b":1e-05}'
    >>> canonical(loads('{"n": 123456789012345678901234567890}'))
    '{"n":123456789012345678901234567890}'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from ._wire.canonical import Item, canonical_item_parts, canonical_json

__all__ = [
    "canonical",
    "canonical_bytes",
    "canonical_text",
    "encode_item",
    "loader",
    "loads",
    "loads_canonical",
    "loads_canonical_parts",
    "orjson_in_use",
]

_UNSET: Any = object()
_orjson: Any = _UNSET
_SORT_KEYS = 0  # orjson.OPT_SORT_KEYS, once imported
# [0-9][0-9]{18}, not [0-9]{19}: the engine then skips ahead to the next digit.
_LONG_DIGITS = re.compile(r"[0-9][0-9]{18}")


def _lib() -> Any:
    """orjson, imported on first use (never by ``import sdk``), or ``None``."""
    global _orjson, _SORT_KEYS
    if _orjson is _UNSET:
        try:
            import orjson
        except ImportError:
            _orjson = None
        else:
            _orjson, _SORT_KEYS = orjson, orjson.OPT_SORT_KEYS
    return _orjson


def orjson_in_use() -> bool:
    """Whether the fast path is available (the ``fast`` extra is installed)."""
    return _lib() is not None


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``, through orjson when it reads the text the same way."""
    lib = _orjson if _orjson is not _UNSET else _lib()
    # orjson reads integers beyond 64 bits as floats: text with a run of 19 digits or
    # more (a number, or not) goes to the stdlib, which keeps them exact.
    if lib is not None and not _long_digits(text):
        try:
            return lib.loads(text)
        except lib.JSONDecodeError:
            pass  # the stdlib decides: it may accept (NaN) or refuse with its own message
    return json.loads(text)


def loader(text: bytes) -> Callable[[bytes], Any]:
    """A parser for the parts of ``text`` (each a JSON text of its own) that reads them as
    :func:`loads` reads ``text``: orjson's when it reads the whole text the same way,
    else the stdlib's. A part orjson refuses (a NaN token) must then be read with
    :func:`loads`, which lets the stdlib decide.

    >>> loader(b'[1, 2]')(b'{"a": 1}')
    {'a': 1}
    >>> loader(b'{"n":1234567890123456789}') is json.loads
    True
    """
    lib = _orjson if _orjson is not _UNSET else _lib()
    if lib is not None and not _long_digits(text):
        return lib.loads  # type: ignore[no-any-return]
    return json.loads


#: Every byte to a space but digits, which become 9s: a run of 19 digits is then found
#: by one ``bytes.find`` (about 7 x faster than the regex on a 140 kB page).
_DIGITS_ONLY = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_NINETEEN = b"9" * 19


def _long_digits(text: str | bytes) -> bool:
    """Whether ``text`` holds a run of 19 digits or more.

    >>> _long_digits(b'{"n":1234567890123456789}'), _long_digits(b'{"n":123456789012345678}')
    (True, False)
    >>> _long_digits('{"n":1234567890123456789}')
    True
    """
    if isinstance(text, bytes):
        return text.translate(_DIGITS_ONLY).find(_NINETEEN) >= 0
    return _LONG_DIGITS.search(text) is not None


def canonical(value: Any) -> str:
    """:func:`~sdk.contract.canonical_json` of a value a JSON parser produced."""
    text = _orjson_canonical(value)
    return canonical_json(value) if text is None else text


def canonical_text(text: str) -> str:
    """``canonical(loads(text))``, the canonical JSON of a JSON text, faster when the text
    is canonical already (what the store writes).

    orjson alone reads and writes such a text: when it comes back unchanged, orjson read it
    exactly, since integers beyond 64 bits, the one thing it reads differently, would
    come back as floats (with a point or an exponent). Any other text is read as
    :func:`loads` reads it.

    >>> canonical_text('{"a":[1,2],"b":"x"}')
    '{"a":[1,2],"b":"x"}'
    >>> canonical_text('{"b": 1, "a": 123456789012345678901234567890}')
    '{"a":123456789012345678901234567890,"b":1}'
    """
    lib = _orjson if _orjson is not _UNSET else _lib()
    if lib is not None:
        try:
            again = _orjson_canonical(lib.loads(text))
        except lib.JSONDecodeError:
            again = None
        if again == text:
            return text
    return canonical(loads(text))


def loads_canonical(text: bytes) -> Any:
    """The value of a canonical JSON text, read and checked by orjson in two calls;
    ``ValueError`` when the text is not canonical JSON or orjson is missing (the caller
    then takes its general path).

    orjson wrote the text back unchanged, so it read it exactly (see
    :func:`canonical_text`) and the stdlib would write it alike: what orjson reads holds
    no NaN, so a ``null`` in it is a null, and a text holding ``e-`` or ``0.0000`` (small
    floats, printed differently) is left to the general path.

    >>> not orjson_in_use() or loads_canonical(b'{"a":[1,null],"b":"x"}') == {"a": [1, None],
    ...                                                                  "b": "x"}
    True
    >>> loads_canonical(b'{"b":1,"a":2}')
    Traceback (most recent call last):
    ...
    ValueError: not canonical JSON
    """
    lib = _orjson if _orjson is not _UNSET else _lib()
    if lib is None:
        raise ValueError("not canonical JSON")  # as far as the stdlib alone can tell fast
    value = lib.loads(text)  # orjson.JSONDecodeError is a ValueError
    if _small_floats(text) or lib.dumps(value, option=_SORT_KEYS) != text:
        raise ValueError("not canonical JSON")
    return value


def loads_canonical_parts(parts: list[bytes]) -> list[Any] | None:
    """The values of ``parts``, JSON texts each the canonical JSON of its value, read in
    one call (as :func:`loads_canonical` reads one text); ``None`` when orjson is missing
    or a part is not one canonical JSON value.

    The parts are read as one array: as many values as parts, written back unchanged,
    means each part is its value's canonical text (a part holding less than a whole value
    would put a joining comma inside a value, leaving fewer values than parts).

    >>> not orjson_in_use() or loads_canonical_parts([b'{"a":1}', b"[2]"]) == [{"a": 1}, [2]]
    True
    >>> loads_canonical_parts([b'{"a":1', b"}"]), loads_canonical_parts([b'{"b":1,"a":2}'])
    (None, None)
    """
    try:
        values: list[Any] = loads_canonical(b"[" + b",".join(parts) + b"]")
    except ValueError:
        return None
    return values if len(values) == len(parts) else None


_DIGITS = frozenset(b"0123456789")


def _small_floats(text: bytes) -> bool:
    """Whether ``text`` may hold a float that orjson prints unlike the stdlib: ``0.0000``,
    or ``e-`` after a digit (in a string too, which is only slower). ``e-`` alone is
    common in text ("course-1"), and such text still takes the fast path.

    >>> _small_floats(b'{"k":"course-1","v":1e-07}'), _small_floats(b'{"k":"course-1"}')
    (True, False)
    """
    if b"0.0000" in text:
        return True
    at = text.find(b"e-", 1)
    while at > 0:
        if text[at - 1] in _DIGITS:
            return True
        at = text.find(b"e-", at + 2)
    return False


def encode_item(item: Item) -> tuple[str, bytes]:
    """The canonical JSON of a parsed wire item's data, and the item's canonical bytes.

    The envelope (two names, an integer, a boolean) prints alike in both libraries, so
    when the data is safe for orjson, so is the whole item: two calls into C.

    >>> encode_item({"collection": "c", "key": "k", "data": {"b": 1, "a": 1e-05},
    ...              "updatedAt": 2, "deleted": False})[1]
    b'{"collection":"c","data":{"a":1e-05,"b":1},"deleted":false,"key":"k","updatedAt":2}'
    """
    text = _orjson_canonical(item["data"])
    if text is not None:
        return text, _orjson.dumps(item, option=_SORT_KEYS)
    text = canonical_json(item["data"])
    return text, canonical_item_parts(
        item["collection"], item["key"], text, item["updatedAt"], item["deleted"]
    )


def canonical_bytes(value: Any) -> bytes | None:
    """The canonical JSON of a parsed value as UTF-8, in one call into orjson; ``None``
    when orjson is missing or its answer may not be the stdlib's (the caller then takes
    its slower path). For whole batches: one call instead of one per item.

    >>> canonical_bytes({"b": [1], "a": "x"}) in (b'{"a":"x","b":[1]}', None)
    True
    >>> canonical_bytes({"small": 1e-05})  # orjson would print 1e-5
    """
    text = _orjson_canonical(value)
    return None if text is None else text.encode()


def _orjson_canonical(value: Any) -> str | None:
    """orjson's sorted-key text of ``value`` when it is provably the stdlib's canonical
    JSON; ``None`` when orjson is missing, refuses the value or may have printed it
    differently (the caller then asks the stdlib)."""
    lib = _orjson if _orjson is not _UNSET else _lib()
    if lib is None:
        return None
    try:
        out: bytes = lib.dumps(value, option=_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError is one
        return None
    text = out.decode("utf-8")  # `in` is faster on str than on bytes
    if "e-" in text or "0.0000" in text or "null" in text:
        return None
    return text
