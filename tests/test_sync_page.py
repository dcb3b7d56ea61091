"""``PulledPage``: a pull page read an item at a time means what the whole page means."""

from __future__ import annotations

import json
import math
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
