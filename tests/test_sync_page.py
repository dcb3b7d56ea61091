"""``PulledPage``: a pull page read an item at a time means what the whole page means."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backend_stub.settings import Settings
from backend_stub.storage.records import CloudItem
from backend_stub.storage.sqlite import SQLiteStorage
from backend_stub.sync import pull_body
from sdk import ProtocolError, _fastjson
from sdk._sync.page import PulledPage
from sdk._sync.pull import _pulled_page, _pulled_texts
from sdk.contract import canonical_json, item_digest

CHECKSUM = "ab" * 32
ENVELOPE = {"cursor": "7", "hasMore": True, "seq": 7, "checksum": CHECKSUM, "itemCount": 3}
SEPARATOR = '},{"collection":'

# Data that cuts badly: an array of objects whose member is "collection", strings holding
# the separator's text, integers beyond 64 bits, floats.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", SEPARATOR, '"}],"cursor":"x', "\u00e9\U0001f600", "x" * 30]),
)
DATA = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["collection", "a", "b", "key"]), inner, max_size=3),
    ),
    max_leaves=8,
).map(lambda value: {"v": value})
ITEMS = st.lists(
    st.builds(
        lambda collection, key, data, deleted, seq, stamp: {
            "collection": collection,
            "key": key,
            "data": data,
            "deleted": deleted,
            "seq": seq,
            "updatedAt": stamp,
        },
        st.sampled_from(["lessons", "c"]),
        st.text(min_size=1, max_size=6),
        DATA,
        st.booleans(),
        st.integers(0, 2**63 - 1),
        st.integers(0, 2**53),
    ),
    max_size=6,
)


def server_body(items: list[dict[str, Any]], **envelope: Any) -> bytes:
    """A body as backend_stub writes one: no whitespace, members sorted in each item,
    ``changes`` first."""
    page = {"changes": items, **ENVELOPE, **envelope}
    head = json.dumps({"changes": items}, sort_keys=True, separators=(",", ":"))[:-1]
    rest = json.dumps({k: v for k, v in page.items() if k != "changes"}, separators=(",", ":"))
    return (head + "," + rest[1:]).encode()


def whole(body: bytes) -> dict[str, Any]:
    page: dict[str, Any] = _fastjson.loads(body)
    return page


def read(body: bytes) -> tuple[dict[str, Any], list[Any]]:
    page = PulledPage(body)
    return page.envelope, page.rows(list)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=ITEMS)
@example(items=[])
@example(
    items=[
        {
            "collection": "c",
            "key": "k",
            "data": {"v": [{"a": 1}, {"collection": "c", "b": [1]}]},
            "deleted": False,
            "seq": 1,
            "updatedAt": 2,
        }
    ]
)
def test_a_page_read_an_item_at_a_time_means_what_the_whole_page_means(items):
    for body in (
        server_body(items),
        json.dumps({"changes": items, **ENVELOPE}).encode(),  # with whitespace
        json.dumps({**ENVELOPE, "changes": items}, separators=(",", ":")).encode(),
    ):
        expected = whole(body)
        envelope, rows = read(body)
        assert rows == expected.pop("changes")
        assert envelope == expected


def test_the_servers_page_is_read_an_item_at_a_time():
    storage = SQLiteStorage.in_memory()
    data = ['{"a":[{"b":1},{"collection":"x"}]}', '{"n":' + "9" * 25 + "}", '{"s":"},{\\"c\\":1"}']
    storage.put_cloud_items(
        "u", [CloudItem("c", f"k{i}", d, i, False, 1, "dev") for i, d in enumerate(data * 3)], 0
    )
    body = pull_body(storage, Settings(), "u", since=None, until=None, limit=100)
    storage.close()
    body = body.encode() if isinstance(body, str) else body
    given: list[str] = []

    def convert(items: Any) -> list[Any]:
        given.append(type(items).__name__)
        return list(items)

    page = PulledPage(body)
    rows = page.rows(convert)
    expected = whole(body)
    assert rows == expected.pop("changes") and page.envelope == expected
    assert len(rows) == 9 and rows[1]["data"]["n"] == int("9" * 25)
    # the first item's data cuts badly: the page is read whole after its first piece
    assert given == ["generator", "list"]
    clean = [item for item in rows if "collection" not in json.dumps(item["data"])]
    given.clear()
    assert PulledPage(server_body(clean)).rows(convert) == clean
    assert given == ["generator"]


def test_a_page_whose_rest_names_changes_again_means_what_the_parser_says():
    body = server_body([{"collection": "c"}])[:-1] + b',"changes":[]}'
    assert whole(body)["changes"] == []  # the last one wins
    assert read(body) == (ENVELOPE, [])


def test_a_nan_in_an_item_is_read_as_the_stdlib_reads_the_whole_page():
    body = server_body([]).replace(b'"changes":[]', b'"changes":[{"collection":"c","n":NaN}]')
    _, rows = read(body)
    assert math.isnan(rows[0]["n"])


def test_without_orjson_a_page_is_read_the_same(monkeypatch: pytest.MonkeyPatch):
    items = [{"collection": "c", "key": "k", "data": {"f": 0.1}, "seq": 3}]
    with_orjson = read(server_body(items))
    monkeypatch.setattr(_fastjson, "_orjson", None)
    assert read(server_body(items)) == with_orjson


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        pytest.param(b"<html>hi</html>", "not JSON", id="html"),
        pytest.param(b"", "not JSON", id="empty"),
        pytest.param(b"[1, 2]", "not a page of changes", id="list"),
        pytest.param(server_body([]).replace(b'"cursor"', b'"kursor"'), "not a page", id="field"),
        pytest.param(server_body([], checksum="x"), "not a page of changes", id="checksum"),
        pytest.param(server_body([], seq=True), "not a page of changes", id="bool-seq"),
        pytest.param(
            server_body([{"collection": "c", "data": {}}]).replace(
                b'"data":{}', b'"data":' + b"[" * 100_000 + b"]" * 100_000
            ),
            "not JSON",
            id="nested-too-deep",
        ),
        pytest.param(
            server_body([]).replace(b'"cursor":"7"', b'"cursor":' + b"[" * 100_000),
            "not JSON",
            id="envelope-too-deep",
        ),
        pytest.param(
            server_body([{"collection": "c"}]).replace(b'"changes"', b'"chunked"'),
            "not a page of changes",
            id="no-changes",
        ),
    ],
)
def test_a_body_that_is_not_a_page_is_a_protocol_error(body: bytes, needle: str):
    with pytest.raises(ProtocolError, match=needle):
        PulledPage(body).rows(list)


def test_an_item_that_is_not_json_is_a_protocol_error_when_the_items_are_read():
    body = server_body([{"collection": "c", "key": "k"}]).replace(b'"key":"k"', b'"key":k')
    page = PulledPage(body)  # the envelope is fine
    with pytest.raises(ProtocolError, match="not JSON"):
        page.rows(list)


# Valid wire items as the server writes them: data whose text misleads a cut (the
# separator, ',"deleted":' and ',"seq":' inside strings and as members), small floats and
# integers beyond 64 bits (both left to the item-at-a-time path), keys with quotes and
# escapes.
MISLEADING = st.sampled_from(
    [SEPARATOR, ',"deleted":true', ',"seq":1,"updatedAt":2}', 'k"\\', "1e-07", "\u2028"]
)
WIRE_DATA = st.recursive(
    st.one_of(SCALARS, MISLEADING, st.floats(1e-9, 1e-4)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["collection", "seq", "deleted", "data", "z"]), inner, max_size=3
        ),
    ),
    max_leaves=6,
).map(lambda value: {"v": value})
KEYS = MISLEADING | st.text(
    st.characters(min_codepoint=0x20, exclude_categories=("Cs",)), min_size=1, max_size=5
)


def served(rows: dict[tuple[str, str], tuple[Any, int, bool]]) -> bytes:
    """The page backend_stub writes of these cloud items."""
    storage = SQLiteStorage.in_memory()
    try:
        storage.put_cloud_items(
            "u",
            [
                CloudItem(c, k, canonical_json(data), at, deleted, 1, "dev")
                for (c, k), (data, at, deleted) in rows.items()
            ],
            0,
        )
        body = pull_body(storage, Settings(), "u", since=None, until=None, limit=1000)
    finally:
        storage.close()
    return body.encode() if isinstance(body, str) else body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.dictionaries(
        st.tuples(st.sampled_from(["c", "lesson_progress", "a.b-c"]), KEYS),
        st.tuples(WIRE_DATA, st.integers(0, 2**63 - 1), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    filler=st.integers(0, 600),
)
def test_a_page_read_in_chunks_of_columns_reads_as_item_by_item(rows, filler):
    # ``filler`` plain items after them: the page spans chunks of _pulled_texts.
    rows = {**rows, **{("z", f"k{i:04d}"): ({"n": i}, i, False) for i in range(filler)}}
    body = served(rows)
    by_item = PulledPage(body).rows(_pulled_page)
    page = PulledPage(body)
    by_chunk = _pulled_texts(page.texts() or [])
    # No small float, no integer beyond 64 bits (20 digits), no data that cuts badly.
    plain = not re.search(rb"[0-9]e-|0\.0000|[0-9]{20}", body)
    if len(page.texts() or []) == len(rows) and plain and _fastjson.orjson_in_use():
        assert by_chunk is not None  # the usual page takes the chunks' path
    if by_chunk is not None:
        assert (by_chunk.items(), list(by_chunk.digests)) == by_item
    items, digests = by_item
    assert [row[:2] for row, _ in items] == sorted(rows)
    assert digests == [
        item_digest(
            {"collection": c, "key": k, "data": json.loads(d), "updatedAt": at, "deleted": bool(x)}
        )
        for (c, k, d, at, x), _ in items
    ]


@pytest.mark.parametrize("at", [0, 1, 248, 249, 250, 299])
def test_an_item_whose_data_cuts_badly_sends_its_page_item_by_item(at):
    # Its data holds an object whose first member is "collection", in an array: the page's
    # texts hold one more than its items (wherever the chunks of _pulled_texts end).
    data = {"a": [{"b": 1}, {"collection": "x", "deleted": False, "key": "k", "seq": 1}]}
    rows = {("c", f"k{i:03d}"): (data if i == at else {"n": i}, i, False) for i in range(300)}
    page = PulledPage(served(rows))
    assert page.texts() is not None and len(page.texts() or []) == 301
    assert _pulled_texts(page.texts() or []) is None


@pytest.mark.parametrize(
    "unusual",
    [
        pytest.param(lambda t: t.replace(b'"seq":', b'"seq":-'), id="negative-seq"),
        pytest.param(lambda t: t.replace(b'"deleted":false', b'"deleted":0'), id="int-deleted"),
        pytest.param(lambda t: t.replace(b'"key":"k1"', b'"key":"k\\u00011"'), id="control-key"),
        pytest.param(lambda t: t.replace(b'"collection":"c"', b'"collection":"c c"'), id="name"),
        pytest.param(lambda t: t.replace(b'{"n":1}', b'{"n": 1}'), id="not-canonical"),
        # orjson writes 2.5e-05 so, and reads it back the same: the stdlib writes 2.5e-05.
        pytest.param(lambda t: t.replace(b'{"n":1}', b'{"n":0.000025}'), id="small-float"),
        pytest.param(lambda t: t.replace(b'"data"', b'"datum"'), id="member"),
        pytest.param(lambda t: t.replace(b'"updatedAt":1', b'"updatedAt":1.5'), id="float-stamp"),
    ],
)
def test_an_unusual_item_sends_its_page_item_by_item(unusual):
    body = unusual(served({("c", f"k{i}"): ({"n": i}, i, False) for i in range(300)}))
    page = PulledPage(body)
    assert page.texts() is not None and _pulled_texts(page.texts() or []) is None
