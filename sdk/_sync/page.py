"""A pull page's body read into its envelope and its items, one item at a time.

A page of 5,000 items parsed at once is 5,000 dicts alive together while the page is
checked and written. They outlive several of the interpreter's young collections, so
they are promoted and pile up in the oldest generation, and every few pages a full
collection walks the whole heap: a quarter of a bootstrap's client time went there
(`bench/sync.py`, 1M items: 47 full collections; gc callbacks timed them). So a page the
server wrote the usual way (no whitespace, ``changes`` first, then ``cursor``) is cut at
each ``},{"collection":`` and its items are parsed one at a time, each dropped once it
is checked.

The cut cannot change what the page means. The body is the head, the items' texts
joined by commas, and the rest. When every part parses as JSON, the body parses as the
same values, the grammar being what it is. A cut inside an item's data (where
``{"collection":`` opens an object inside an array) leaves both pieces with unbalanced
brackets, so a piece fails to parse and the page is read whole instead. So is any body
of another shape, and one whose rest names ``changes`` again (the last would win).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .. import _fastjson as fastjson
from .._errors import ProtocolError
from .._wire.canonical import SHA256_PATTERN

__all__ = ["PulledPage"]

T = TypeVar("T")

_CHECKSUM = re.compile(SHA256_PATTERN)
_HEAD = b'{"changes":['
_ITEM_HEAD = b'{"collection":'
_SEPARATOR = b'},{"collection":'
_TAIL = b'],"cursor":'


class _Uncut(Exception):
    """A piece of the cut page is not JSON: the page is read whole."""


class PulledPage:
    """One page's body: its envelope (every member but ``changes``) read and checked at
    once, its items when :meth:`rows` asks for them.

    Raises :class:`~sdk.ProtocolError` when the body is not a page of changes.

    >>> body = (b'{"changes":[{"collection":"c","data":{},"deleted":false,"key":"k",'
    ...         b'"seq":1,"updatedAt":2}],"cursor":"1","hasMore":false,"seq":1,'
    ...         b'"checksum":"' + b"0" * 64 + b'","itemCount":1}')
    >>> page = PulledPage(body)
    >>> page.envelope["cursor"], [item["key"] for item in page.rows(list)]
    ('1', ['k'])
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._pieces: list[bytes] | None = None
        self._whole: dict[str, Any] | None = None
        cut = _cut(body)
        if cut is None:
            self._whole = _whole(body)
            self.envelope = {k: v for k, v in self._whole.items() if k != "changes"}
        else:
            self.envelope, self._pieces = cut

    def texts(self) -> list[bytes] | None:
        """Each item's own JSON text in the page, in order, when the page was cut (a text
        may still be part of an item, or more, when an item's data cut badly: the caller
        must check that the texts read as as many items); ``None`` when it was not.

        >>> PulledPage(b'{"changes":[{"collection":"c","k":1}],"cursor":"1","hasMore":false,'
        ...            b'"seq":1,"checksum":"' + b"0" * 64 + b'","itemCount":1}').texts()
        [b'{"collection":"c","k":1}']
        """
        if self._pieces is None:
            return None
        return [_ITEM_HEAD + piece + b"}" for piece in self._pieces]

    def rows(self, convert: Callable[[Iterable[Any]], T]) -> T:
        """``convert(the page's items)``, the items as parsed JSON, in order. ``convert``
        may be given them twice (the second time from the whole page) when the body turns
        out not to cut cleanly, so it must not write anything. Raises
        :class:`~sdk.ProtocolError` when the body is not JSON after all."""
        if self._pieces is not None:
            try:
                return convert(_items(fastjson.loader(self._body), self._pieces))
            except _Uncut:
                self._pieces = None
        if self._whole is None:
            self._whole = _whole(self._body)
        return convert(self._whole["changes"])


def _cut(body: bytes) -> tuple[dict[str, Any], list[bytes]] | None:
    """The envelope and the items' pieces; ``None`` when the body is not in the usual
    shape."""
    end = body.rfind(_TAIL)
    if not body.startswith(_HEAD) or end < 0:
        return None
    try:  # the rest, from "cursor" on, as an object of its own
        envelope = fastjson.loads(b"{" + body[end + len(b"],") :])
    except (ValueError, RecursionError):
        return None
    if "changes" in envelope or not _is_page({**envelope, "changes": []}):
        return None
    items = body[len(_HEAD) : end]
    if not items:
        return envelope, []
    if items.startswith(_ITEM_HEAD) and items.endswith(b"}"):
        return envelope, items[len(_ITEM_HEAD) : -1].split(_SEPARATOR)
    return None


def _items(loads: Callable[[bytes], Any], pieces: list[bytes]) -> Iterator[Any]:
    for piece in pieces:
        try:
            item = loads(_ITEM_HEAD + piece + b"}")
        except (ValueError, RecursionError):
            raise _Uncut from None
        yield item


def _whole(body: bytes) -> dict[str, Any]:
    try:
        page = fastjson.loads(body)
    except (ValueError, RecursionError) as exc:  # nested too deep for the parser
        raise ProtocolError(
            f"pull: the server's answer is not JSON ({exc}); check that the URL points at "
            "the migration server"
        ) from exc
    if not _is_page(page):
        raise ProtocolError(
            "pull: the server's answer is not a page of changes (changes, cursor, "
            "hasMore, seq, checksum, itemCount); the server and the SDK disagree on the "
            "wire contract, update whichever is older"
        )
    return page  # type: ignore[no-any-return]


def _is_page(page: object) -> bool:
    return (
        isinstance(page, dict)
        and isinstance(page.get("changes"), list)
        and isinstance(page.get("cursor"), str)
        and isinstance(page.get("hasMore"), bool)
        and type(page.get("seq")) is int
        and isinstance(page.get("checksum"), str)
        and _CHECKSUM.fullmatch(page["checksum"]) is not None
        and type(page.get("itemCount")) is int
    )
