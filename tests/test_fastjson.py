"""The orjson fast path gives the canonical encoding's exact bytes, or steps aside."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sdk import _fastjson as fastjson
from sdk.contract import canonical_item, canonical_json

pytest.importorskip("orjson")  # the `fast` extra, part of the test install

# What a JSON parser can produce: the values the fast path is used for.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too, which orjson refuses
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e-05, 1e-07, 0.0001, 1e16, 1.5e16, 5e-324, -0.0, 1e300, 2.5e-308])
    | st.text()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _stdlib(value: object) -> str | type[BaseException]:
    try:
        return canonical_json(value)
    except (ValueError, TypeError) as exc:
        return type(exc)


def _fast(value: object) -> str | type[BaseException]:
    try:
        return fastjson.canonical(value)
    except (ValueError, TypeError) as exc:
        return type(exc)


@pytest.fixture(params=["orjson", "stdlib only"])
def path(request, monkeypatch):
    if request.param == "stdlib only":
        monkeypatch.setattr(fastjson, "_orjson", None)
    else:
        assert fastjson.orjson_in_use()
    return request.param


@settings(max_examples=400, deadline=None)
@given(value=st.dictionaries(st.text(), _values, max_size=6))
def test_canonical_is_the_stdlib_canonical_encoding_byte_for_byte(value) -> None:
    assert fastjson.orjson_in_use()
    assert _fast(value) == _stdlib(value)


# The fixture sets the path once for every example, which is what is wanted here.
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=st.dictionaries(st.text(), _values, max_size=6),
    names=st.tuples(st.text(), st.text()),
    updated_at=st.integers(0, 2**63 - 1),
    deleted=st.booleans(),
)
def test_encode_item_gives_the_canonical_data_and_item(path, data, names, updated_at, deleted):
    item = {
        "collection": names[0],
        "key": names[1],
        "data": data,
        "updatedAt": updated_at,
        "deleted": deleted,
    }
    try:
        expected = (canonical_json(data), canonical_item(item))  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        with pytest.raises(type(exc)):
            fastjson.encode_item(item)  # type: ignore[arg-type]
    else:
        assert fastjson.encode_item(item) == expected  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(value=_values, indent=st.sampled_from([None, 1]), ascii_only=st.booleans())
def test_loads_reads_any_json_text_as_the_stdlib_does(value, indent, ascii_only) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    assert canonical_json(fastjson.loads(text)) == canonical_json(json.loads(text))
    assert canonical_json(fastjson.loads(text.encode())) == canonical_json(json.loads(text))


@pytest.mark.parametrize(
    "value",
    [
        {"small": 1e-05},  # orjson: 0.00001
        {"smaller": 1e-07},  # orjson: 1e-7
        {"edge": 0.0001, "big": 1e16, "neg": -0.0},
        {"huge": 2**64, "negative": -(2**63) - 1},  # beyond orjson's 64-bit integers
        {"null": None, "text": "e-mail 0.00001 null"},
        {"deep": json.loads("[" * 300 + "]" * 300)},  # deeper than orjson nests
        {"nan": math.nan},  # refused by the canonical encoding
        {"inf": math.inf},
        {1: "non-string key"},
        {"surrogate": "\ud800"},
    ],
    ids=repr,
)
def test_values_orjson_formats_differently_or_refuses_get_the_stdlib_answer(path, value) -> None:
    assert _fast(value) == _stdlib(value)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": NaN}',  # the stdlib reads NaN; orjson refuses it
        '{"a": 1e400}',
        '{"a": 123456789012345678901234567890}',
        '{"a": "\\ud800"}',  # a lone surrogate escape
        '{"a": 1, "a": 2}',  # a repeated member: the last one wins in both
        "[" * 2000 + "]" * 2000,
    ],
)
def test_texts_orjson_refuses_are_read_or_refused_by_the_stdlib(path, text) -> None:
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            fastjson.loads(text)
    else:
        assert repr(fastjson.loads(text)) == repr(expected)


def test_values_no_parser_produces_are_not_for_the_fast_path() -> None:
    # orjson would serialize an enum; the canonical encoding refuses it. canonical() is
    # only called with parsed JSON, and the store encodes app values with the stdlib.
    import enum

    class Colour(enum.Enum):
        RED = "red"

    with pytest.raises(TypeError):
        canonical_json({"c": Colour.RED})


# Data that holds the text the server cuts a canonical batch body at, as keys and values.
_tricky = st.sampled_from(['},{"collection":', ',"deleted":', "collection", "updatedAt", "deleted"])
_item_data = st.dictionaries(
    st.text(max_size=5) | _tricky,
    st.recursive(
        _scalars | _tricky,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=5) | _tricky, inner, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.dictionaries(
        st.tuples(
            st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,5}", fullmatch=True),
            st.text(st.characters(min_codepoint=0x20), min_size=1, max_size=6)
            | _tricky.filter(lambda t: t != "collection"),
        ),
        st.tuples(_item_data, st.integers(0, 2**63 - 1), st.booleans()),
        min_size=1,
        max_size=5,
    )
)
# The text the body is cut at, inside an item's data (an array of objects).
@example(rows={("c", "k"): ({"a": [{}, {"collection": 1}]}, 1, False), ("c", "l"): ({}, 2, True)})
@example(rows={("c", "k"): ({"a": [{"b": 2}, {"collection": "c", "deleted": 1}]}, 1, False)})
def test_the_server_cuts_a_canonical_batch_into_the_items_it_would_encode_one_by_one(rows):
    from backend_stub.items import _encode, parse_batch
    from sdk.contract import batch_body

    items = [
        {"collection": c, "key": k, "data": data, "updatedAt": at, "deleted": deleted}
        for (c, k), (data, at, deleted) in sorted(rows.items())
    ]
    try:
        body = batch_body(canonical_item(item) for item in items)  # type: ignore[arg-type]
    except ValueError:  # NaN has no JSON form: no body to send
        return
    one_by_one = [_encode(item)[0] for item in items]  # type: ignore[arg-type]

    # By item and by column (what classify reads), whichever path parsed the body: the
    # canonical body is cut; the same items in a body that is not canonical take the
    # per-item path.
    fields = [
        [item[name] for item in items] for name in ("collection", "key", "updatedAt", "deleted")
    ]
    spaced = json.dumps({"items": items}, indent=1, ensure_ascii=False).encode()
    for sent in (body, spaced):
        parsed = parse_batch(sent, max_items=10)
        assert list(parsed) == one_by_one
        assert [parsed[i] for i in range(len(items))] == one_by_one
        assert [list(column) for column in parsed.fields()] == fields


@settings(max_examples=400, deadline=None)
@given(value=_values, canonical_already=st.booleans())
def test_canonical_text_is_the_canonical_encoding_of_what_the_stdlib_reads(
    value, canonical_already
) -> None:
    try:
        text = canonical_json(value) if canonical_already else json.dumps(value, indent=1)
    except ValueError:  # NaN: no canonical text
        return
    assert fastjson.canonical_text(text) == canonical_json(json.loads(text))


# Values that break one rule each of a wire item (or of the fast path's own guards).
_BROKEN = {
    "collection": st.sampled_from(["", "-x", "a" * 65, "c d", 1, None]),
    "key": st.sampled_from(["", "a\n", "\x00", "k" * 513, 5, None]),
    "data": st.sampled_from(
        [[], "x", 1, None, {"n": math.nan}, {"f": 1e-07}, {"f": 0.00001}, {"n": 2**70}]
    ),
    "updatedAt": st.sampled_from([-1, 2**63, 1.0, 1.5, True, "1", None]),
    "deleted": st.sampled_from([0, 1, "false", None, 0.0]),
}
_plain_data = st.dictionaries(
    st.text(max_size=4),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=6),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=6,
    ),
    max_size=4,
)
_wire_items = st.lists(
    st.fixed_dictionaries(
        {
            "collection": st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,5}", fullmatch=True),
            "key": st.text(st.characters(min_codepoint=0x20), min_size=1, max_size=6),
            "data": _plain_data | st.dictionaries(st.text(max_size=3), _values, max_size=3),
            "updatedAt": st.integers(0, 2**63 - 1),
            "deleted": st.booleans(),
        }
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda item: (item["collection"], item["key"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=_wire_items,
    breaks=st.lists(
        st.tuples(
            st.integers(0, 5),
            st.sampled_from([*_BROKEN, "missing", "extra", "unsorted"]),
            st.data(),
        ),
        max_size=2,
    ),
    writer=st.sampled_from(["stdlib", "orjson"]),
)
def test_the_fast_batch_path_accepts_only_what_pydantic_accepts_and_cuts_alike(
    items, breaks, writer
) -> None:
    import orjson

    from backend_stub.items import _parse_canonical, _parse_general
    from backend_stub.problems import ApiError

    items.sort(key=lambda item: (item["collection"], item["key"]))
    for index, kind, data in breaks:
        item = items[index % len(items)]
        if kind == "missing":
            del item[data.draw(st.sampled_from(sorted(item)))]
        elif kind == "extra":
            item["extra"] = 1
        elif kind == "unsorted":
            items.reverse()
        else:
            item[kind] = data.draw(_BROKEN[kind])
    try:
        if writer == "stdlib":
            body = json.dumps(
                {"items": items}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
        else:
            body = orjson.dumps({"items": items}, option=orjson.OPT_SORT_KEYS)
    except (TypeError, ValueError):  # beyond what this writer writes
        return
    try:
        general = _parse_general(body, 10)
    except ApiError:
        general = None
    fast = _parse_canonical(body, 10)
    if fast is not None:  # what the fast path takes, pydantic takes, and cuts alike
        assert general is not None
        assert list(fast) == list(general)
        assert [list(c) for c in fast.fields()] == [list(c) for c in general.fields()]


@settings(max_examples=200, deadline=None)
@given(items=_wire_items.map(lambda items: [dict(i, data={"d": i["data"]}) for i in items]))
def test_the_sdk_s_batches_take_the_fast_path(items) -> None:
    from backend_stub.items import _parse_canonical, _parse_general
    from sdk.contract import batch_body

    items.sort(key=lambda item: (item["collection"], item["key"]))
    for item in items:
        item["data"] = _restrict(item["data"])
    try:
        body = batch_body(canonical_item(item) for item in items)
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 body to send
        return
    # Text that looks like a small float (in a string) is left to the general path.
    assume(not re.search(rb"[0-9]e-|0\.0000", body))
    fast = _parse_canonical(body, 10)
    assert fast is not None and list(fast) == list(_parse_general(body, 10))


def _restrict(value: object) -> object:
    """``value`` without what the fast path leaves to the general one: floats (small ones
    print differently in orjson) and integers beyond 64 bits."""
    if isinstance(value, dict):
        return {k: _restrict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restrict(v) for v in value]
    if isinstance(value, float) or (type(value) is int and abs(value) >= 2**63):
        return 0
    return value


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.sampled_from('0123456789 -.e"{}:é'), max_size=60))
def test_a_run_of_19_digits_is_found_in_bytes_as_in_text(text) -> None:
    expected = re.search(r"[0-9]{19}", text) is not None
    assert fastjson._long_digits(text) is expected
    assert fastjson._long_digits(text.encode()) is expected
