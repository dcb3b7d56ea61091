"""Typed values in item data: bytes, attachments and large values, as plain JSON.

Item data is JSON, so a value JSON has no type for is written as a one-key object whose
key starts with ``$``, and read back as the Python value it stands for:

- ``bytes`` → ``{"$bytes": "<standard base64, padded>"}`` (``b""`` → ``{"$bytes": ""}``);
- an :class:`Attachment` → ``{"$attachment": {"sha256": ..., "size": N, "mediaType": ...}}``,
  the reference to content the store keeps apart (``LocalStore.put_attachment``);
- a ``bytes`` or ``str`` value larger than the store's inline limit →
  ``{"$large": {"sha256": ..., "size": N, "type": "bytes" | "text"}}``: the value is kept
  apart like an attachment and read back as the value itself.

The encoded form is what the store keeps, hashes and sends: digests and checksums are
taken over it (canonical JSON of the encoded data), so the SDK and the server, which
sees plain JSON, agree on them. Encoding is deterministic, so equal values give equal
digests::

    >>> text = encode_text({"audio": b"\\x00\\xff", "none": b""})
    >>> text
    '{"audio":{"$bytes":"AP8="},"none":{"$bytes":""}}'
    >>> decode_text(text)
    {'audio': b'\\x00\\xff', 'none': b''}

An app dict that is exactly one of these forms (its only key ``$bytes``, ``$attachment``
or ``$large``) would read back as something else, so it is refused
(:class:`ReservedValueError`); a dict with such a key among others is plain data.

No pydantic here: the wire models import this module's names only through the store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdk._wire.canonical import MAX_INTEGER

__all__ = [
    "BYTES_TAG",
    "LARGE_TAG",
    "REF_TAG",
    "RESERVED",
    "Attachment",
    "LargeValue",
    "ReservedValueError",
    "decode_text",
    "decode_value",
    "encode_text",
    "large_value",
    "references",
    "wire_text",
]

BYTES_TAG = "$bytes"
REF_TAG = "$attachment"
LARGE_TAG = "$large"
#: The keys of the one-key objects that stand for typed values.
RESERVED = frozenset({BYTES_TAG, REF_TAG, LARGE_TAG})
_MARKS = tuple(f'"{tag}":' for tag in (BYTES_TAG, REF_TAG, LARGE_TAG))
_REF_MARK, _LARGE_MARK = _MARKS[1:]
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9!#$&^_.+-]{1,127}.*")


class ReservedValueError(ValueError):
    """An app dict whose only key is ``$bytes``, ``$attachment`` or ``$large``; or
    data too large for an item even with its large values kept apart."""


@dataclass(frozen=True)
class Attachment:
    """Content kept apart from the items (an image, a recording, a PDF), by its SHA-256.

    The store returns one from ``put_attachment``; put it anywhere in an item's data and
    the item reads back with the same :class:`Attachment`. ``to_json`` is the reference
    object items carry on the wire.

    >>> a = Attachment(sha256="0" * 64, size=3, media_type="image/png")
    >>> a.to_json()["$attachment"]["mediaType"]
    'image/png'
    >>> Attachment.from_json(a.to_json()) == a
    True
    """

    sha256: str
    size: int
    media_type: str = "application/octet-stream"

    def __post_init__(self) -> None:
        if not isinstance(self.sha256, str) or not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if type(self.size) is not int or not 0 <= self.size <= MAX_INTEGER:
            raise ValueError(f"size must be an integer from 0 to 2**63 - 1, got {self.size!r}")
        if not isinstance(self.media_type, str) or not _MEDIA_TYPE.fullmatch(self.media_type):
            raise ValueError(
                f"media_type must be a media type such as 'image/png', got {self.media_type!r}"
            )

    def to_json(self) -> dict[str, Any]:
        """The reference object: ``{"$attachment": {"sha256", "size", "mediaType"}}``."""
        return {REF_TAG: {"sha256": self.sha256, "size": self.size, "mediaType": self.media_type}}

    @classmethod
    def from_json(cls, value: Any) -> Attachment:
        """The attachment a reference object names (``ValueError`` if it names none)."""
        body = value.get(REF_TAG) if isinstance(value, dict) and len(value) == 1 else None
        if not isinstance(body, dict) or set(body) != {"sha256", "size", "mediaType"}:
            raise ValueError(f"not an attachment reference: {value!r}")
        return cls(sha256=body["sha256"], size=body["size"], media_type=body["mediaType"])


@dataclass(frozen=True)
class LargeValue:
    """A ``bytes`` or ``str`` value kept apart from its item (``{"$large": ...}``)."""

    sha256: str
    size: int
    text: bool

    def to_json(self) -> dict[str, Any]:
        kind = "text" if self.text else "bytes"
        return {LARGE_TAG: {"sha256": self.sha256, "size": self.size, "type": kind}}

    @classmethod
    def from_json(cls, value: Any) -> LargeValue | None:
        body = value.get(LARGE_TAG) if isinstance(value, dict) and len(value) == 1 else None
        if not isinstance(body, dict) or set(body) != {"sha256", "size", "type"}:
            return None
        sha, size, kind = body["sha256"], body["size"], body["type"]
        if not (isinstance(sha, str) and _SHA256.fullmatch(sha)) or type(size) is not int:
            return None
        if kind not in ("text", "bytes") or not 0 <= size <= MAX_INTEGER:
            return None
        return cls(sha256=sha, size=size, text=kind == "text")


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, (Attachment, LargeValue)):
        return value.to_json()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encode_text(
    data: Any,
    *,
    spill: Callable[[bytes | str], LargeValue] | None = None,
    limit: int = 0,
    most: int = 0,
) -> str:
    """``data`` as canonical JSON text in the encoded form (see the module's docstring).

    With ``spill``, every ``bytes`` or ``str`` value whose encoded size exceeds ``limit``
    bytes is handed to it and replaced by the :class:`LargeValue` it returns. Raises
    :class:`ReservedValueError` for an app dict that is exactly a typed value's form, or
    (``most``) for encoded data still longer than ``most`` characters;
    ``TypeError``/``ValueError`` for what JSON cannot hold.

    >>> encode_text({"k": [bytearray(b"a")]})
    '{"k":[{"$bytes":"YQ=="}]}'
    >>> encode_text({"v": {"$bytes": "YQ=="}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sdk._store.values.ReservedValueError: the dict at data['v'] has the single key '$bytes', ...
    """
    text = _dumps(data)
    if '"$' in text and any(mark in text for mark in _MARKS):
        _refuse_reserved(data, "data")  # only then: the common case costs one substring test
    if spill is not None and len(text) > limit // 4 and len(text.encode("utf-8")) > limit:
        # A value's encoded size is at most the text's, so a short text needs no walk.
        text = _dumps(_spilled(data, spill, limit))
    if most and len(text) > most:
        raise ReservedValueError(
            f"its data is {len(text):,} characters of JSON even with its large values kept "
            f"apart, more than an item may hold ({most:,}); split it into several items"
        )
    return text


def wire_text(data: Any) -> str:
    """``data`` as canonical JSON where typed values may be Python values or their wire
    forms alike (a merge of two wire items by the app's code): nothing is refused, no
    large value is kept apart.

    >>> wire_text({"a": b"a", "b": {"$bytes": "YQ=="}})
    '{"a":{"$bytes":"YQ=="},"b":{"$bytes":"YQ=="}}'
    """
    return _dumps(data)


def _dumps(value: Any) -> str:
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_default,
    )


def _refuse_reserved(value: Any, where: str) -> None:
    if isinstance(value, dict):
        if len(value) == 1:
            (key,) = value
            if key in RESERVED:
                raise ReservedValueError(
                    f"the dict at {where} has the single key {key!r}, which stands for a "
                    "typed value; rename the key (or add another)"
                )
        for key, inner in value.items():
            _refuse_reserved(inner, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, inner in enumerate(value):
            _refuse_reserved(inner, f"{where}[{index}]")


def _spilled(value: Any, spill: Callable[[bytes | str], LargeValue], limit: int) -> Any:
    if isinstance(value, dict):
        return {k: _spilled(v, spill, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_spilled(v, spill, limit) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) * 4 // 3 + 16 > limit:
            return spill(bytes(value))
    elif (
        isinstance(value, str)
        and len(value) > limit // 4
        and len(value.encode("utf-8", "surrogatepass")) > limit
    ):
        return spill(value)
    return value


def decode_value(value: Any) -> Any:
    """Turn one parsed JSON object back into the value it stands for (an ``object_hook``):
    ``{"$bytes": ...}`` into ``bytes``, a reference into an :class:`Attachment`, a large
    value into a :class:`LargeValue` (the store reads it back). A form that does not
    decode (damaged base64, a bad reference) is left as the dict it is.

    >>> decode_value({"$bytes": ""}), decode_value({"$bytes": "not base64!"})
    (b'', {'$bytes': 'not base64!'})
    """
    if len(value) != 1:
        return value
    tag = next(iter(value))
    if tag == BYTES_TAG:
        body = value[tag]
        if isinstance(body, str):
            try:
                return base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError):
                return value
    elif tag == REF_TAG:
        try:
            return Attachment.from_json(value)
        except (ValueError, TypeError):
            return value
    elif tag == LARGE_TAG:
        return LargeValue.from_json(value) or value
    return value


def decode_text(text: str, resolve: Callable[[LargeValue], Any] | None = None) -> Any:
    """Parse encoded canonical JSON back into the app's values (see :func:`decode_value`);
    ``resolve`` turns each large value into the value itself (the store reads it).

    >>> decode_text('{"a":1}'), decode_text('{"$bytes":"AA=="}')
    ({'a': 1}, {'$bytes': 'AA=='})
    """
    if '"$' not in text or not any(mark in text for mark in _MARKS):
        return json.loads(text)
    if resolve is None:
        return _loads(text, decode_value)

    def hook(value: dict[str, Any]) -> Any:
        decoded = decode_value(value)
        return resolve(decoded) if isinstance(decoded, LargeValue) else decoded

    return _loads(text, hook)


def _loads(text: str, hook: Callable[[dict[str, Any]], Any]) -> Any:
    """Parse with ``hook`` on every object but the outermost: item data is an object,
    even one that looks like a typed value (which only the wire can bring)."""
    value = json.loads(text, object_hook=hook)
    if isinstance(value, dict) or not text.startswith("{"):
        return value
    return {k: json.loads(_dumps(v), object_hook=hook) for k, v in json.loads(text).items()}


def large_value(value: bytes | str) -> LargeValue:
    """The :class:`LargeValue` that stands for ``value`` (its content's SHA-256 and size).

    >>> large_value("ab").size, large_value(b"ab").text
    (2, False)
    """
    content = value.encode("utf-8") if isinstance(value, str) else value
    return LargeValue(hashlib.sha256(content).hexdigest(), len(content), isinstance(value, str))


def references(text: str) -> set[tuple[str, int]]:
    """The ``(sha256, size)`` of every attachment and large value ``text`` references.

    >>> ref = Attachment(sha256="a" * 64, size=2)
    >>> references(encode_text({"x": [ref], "y": b"z"})) == {("a" * 64, 2)}
    True
    """
    if '"$' not in text or (_REF_MARK not in text and _LARGE_MARK not in text):
        return set()
    found: set[tuple[str, int]] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            decoded = decode_value(value)
            if isinstance(decoded, (Attachment, LargeValue)):
                found.add((decoded.sha256, decoded.size))
                return
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    data = json.loads(text)
    for inner in data.values() if isinstance(data, dict) else ():
        walk(inner)  # the data itself is an object, never a reference
    return found
