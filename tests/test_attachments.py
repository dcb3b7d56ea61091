"""Typed values in the store: bytes stay bytes, attachments are kept apart once per
content, large values travel apart from their items, references are tracked."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from sdk import Attachment, AttachmentMissingError, InvalidItemError, LocalStore
from sdk._store.attachments import CHUNK_BYTES, PIECE_BYTES
from sdk._store.detect import LocalState, detect_local
from sdk._store.schema import MIGRATIONS, SCHEMA_STEPS, STORE_APPLICATION_ID, STORE_FORMAT
from sdk._store.values import decode_text, encode_text
from sdk.contract import canonical_json, item_digest


@pytest.fixture
def store(tmp_path):
    with LocalStore(tmp_path / "store.sqlite3") as opened:
        yield opened


def refs(store: LocalStore) -> set[tuple[str, str, str]]:
    with store._reading("test") as conn:
        return set(conn.execute("SELECT collection, key, sha256 FROM item_blobs"))


def chunk_rows(store: LocalStore) -> int:
    with store._reading("test") as conn:
        return int(conn.execute("SELECT count(*) FROM attachment_chunks").fetchone()[0])


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.binary(max_size=64)
)
app_data = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        json_leaf,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    ),
    max_size=6,
).filter(lambda d: "$bytes" not in json.dumps(d, default=repr))  # reserved forms: refused


@settings(max_examples=300, deadline=None)
@given(app_data)
def test_bytes_anywhere_in_nested_data_round_trip_through_the_encoding(data):
    text = encode_text(data)
    assert json.loads(text) == json.loads(canonical_json(json.loads(text)))  # canonical
    assert decode_text(text) == data
    assert encode_text(decode_text(text)) == text  # one encoding per value


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    with LocalStore(tmp_path_factory.mktemp("prop") / "store.sqlite3") as opened:
        yield opened


@settings(max_examples=60, deadline=None)
@given(data=app_data)
def test_bytes_round_trip_through_the_store_and_the_digest_is_over_the_wire_form(
    shared_store, data
):
    store = shared_store
    if True:
        written = store.put("c", "k", data, updated_at=1)
        assert store.get("c", "k")["data"] == data == written["data"]
        wire = store.get("c", "k", wire=True)
        assert json.loads(json.dumps(wire["data"])) == wire["data"]  # plain JSON only
        with store._reading("test") as conn:
            (digest,) = conn.execute("SELECT digest FROM items").fetchone()
        assert digest == item_digest(wire)


def test_empty_bytes_stay_bytes_not_an_empty_string(store):
    store.put("c", "k", {"blob": b"", "text": ""})
    assert store.get("c", "k")["data"] == {"blob": b"", "text": ""}
    assert store.get("c", "k", wire=True)["data"] == {"blob": {"$bytes": ""}, "text": ""}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"v": {"$bytes": "AA=="}}, id="bytes form"),
        pytest.param({"v": [{"$attachment": {"sha256": "0" * 64}}]}, id="attachment form"),
        pytest.param({"$large": 1}, id="large form at the top"),
    ],
)
def test_an_app_dict_that_is_exactly_a_typed_form_is_refused_with_what_to_do(store, data):
    with pytest.raises(InvalidItemError, match="rename the key"):
        store.put("c", "k", data)
    assert store.get("c", "k") is None


def test_a_dict_with_a_dollar_key_among_others_is_plain_data(store):
    data = {"v": {"$bytes": "AA==", "other": 1}}
    store.put("c", "k", data)
    assert store.get("c", "k")["data"] == data


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(0, id="0 B"),
        pytest.param(1, id="1 B"),
        pytest.param(CHUNK_BYTES, id="one chunk"),
        pytest.param(CHUNK_BYTES + 1, id="a chunk and a byte"),
    ],
)
def test_an_attachment_reads_back_whole_from_bytes_a_path_or_a_file(store, tmp_path, size):
    content = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    path = tmp_path / "file.bin"
    path.write_bytes(content)

    kept = [
        store.put_attachment(content, media_type="audio/ogg"),
        store.put_attachment(path, media_type="audio/ogg"),
        store.put_attachment(str(path), media_type="audio/ogg"),
        store.put_attachment(io.BytesIO(content), media_type="audio/ogg"),
    ]

    expected = Attachment(hashlib.sha256(content).hexdigest(), size, "audio/ogg")
    assert kept == [expected] * 4
    assert store.read_attachment(expected) == content
    assert chunk_rows(store) == -(-size // PIECE_BYTES)  # stored once
    with store.open_attachment(expected.sha256) as stream:
        stream.seek(max(size - 3, 0))
        assert stream.read() == content[-3:]


def test_an_attachment_in_an_item_reads_back_as_an_attachment_and_is_tracked(store):
    photo = store.put_attachment(b"png bytes", media_type="image/png")
    store.put("cards", "c1", {"photos": [photo], "front": "hola"})
    store.put("cards", "c2", {"photo": photo})

    assert store.get("cards", "c1")["data"]["photos"] == [photo]
    assert store.get("cards", "c1", wire=True)["data"]["photos"] == [photo.to_json()]
    assert refs(store) == {("cards", "c1", photo.sha256), ("cards", "c2", photo.sha256)}

    store.put("cards", "c1", {"front": "hola"})
    store.delete("cards", "c2")
    assert refs(store) == set()


def test_a_large_value_is_kept_apart_and_read_back_transparently(tmp_path):
    with LocalStore(tmp_path / "s.sqlite3", inline_limit=1024) as store:
        blob, text = bytes(range(256)) * 8, "é" * 600  # 2048 bytes, 1200 bytes
        store.put("c", "k", {"blob": blob, "text": text, "small": b"x" * 10})

        assert store.get("c", "k")["data"] == {"blob": blob, "text": text, "small": b"x" * 10}
        wire = store.get("c", "k", wire=True)["data"]
        assert wire["blob"]["$large"]["type"] == "bytes"
        assert wire["text"]["$large"] == {
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "size": 1200,
            "type": "text",
        }
        assert wire["small"] == {"$bytes": "eHh4eHh4eHh4eA=="}
        assert len(refs(store)) == 2


def test_a_seven_mib_value_leaves_the_item_small(store):
    big = bytes(7 * 1024 * 1024)
    store.put("c", "k", {"recording": big})
    wire = store.get("c", "k", wire=True)
    assert len(canonical_json(wire)) < 300
    assert store.get("c", "k")["data"]["recording"] == big


def test_content_known_only_by_reference_raises_a_typed_error_naming_what_to_do(store):
    unknown = Attachment("a" * 64, 3, "image/png")
    with store._writing("test") as conn:  # what a lazy sync's pull leaves
        from sdk._store.changes import take_remote

        data = canonical_json({"photo": unknown.to_json()})
        take_remote(conn, [(("c", "k", data, 1, 0), 1)])
    assert store.get("c", "k")["data"] == {"photo": unknown}
    assert refs(store) == {("c", "k", "a" * 64)}
    with pytest.raises(AttachmentMissingError, match="sync while online") as caught:
        store.read_attachment(unknown)
    assert caught.value.sha256 == "a" * 64
    with pytest.raises(AttachmentMissingError, match="holds no attachment"):
        store.read_attachment("b" * 64)


@pytest.mark.parametrize("tag", ["$attachment", "$large"])
def test_a_pulled_reference_too_large_for_sqlite_stays_a_dict(store, tag):
    # Only a server can send one; the store keeps sizes as SQLite integers (64 bits).
    body = {"sha256": "a" * 64, "size": 2**63}
    form = {tag: body | ({"mediaType": "image/png"} if tag == "$attachment" else {"type": "text"})}
    with store._writing("test") as conn:
        from sdk._store.changes import take_remote

        take_remote(conn, [(("c", "k", canonical_json({"photo": form}), 1, 0), 1)])
    assert store.get("c", "k")["data"] == {"photo": form}
    assert refs(store) == set()
    with pytest.raises(ValueError, match="from 0 to 2"):
        Attachment("a" * 64, 2**63, "image/png")


def test_bad_attachment_arguments_are_refused(store, tmp_path):
    from sdk import ConfigurationError

    with pytest.raises(ConfigurationError, match="media type"):
        store.put_attachment(b"x", media_type="png")
    with pytest.raises(ConfigurationError, match="cannot read the attachment"):
        store.put_attachment(tmp_path / "missing.bin")
    with pytest.raises(ConfigurationError, match="takes bytes"):
        store.put_attachment(12)  # type: ignore[arg-type]


def test_a_store_of_the_previous_schema_is_detected_then_upgraded(tmp_path):
    path = tmp_path / "s.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA application_id = {STORE_APPLICATION_ID}")
    db = Database(conn, execute_plugins=False)
    MIGRATIONS.apply(db, stop_before="0004_attachments")
    conn.executemany(
        "INSERT INTO store_meta VALUES (?, ?)",
        [("format", STORE_FORMAT), ("data_version", "1"), ("device_id", "d" * 32)],
    )
    conn.execute(
        "INSERT INTO items (collection, key, data, updated_at, deleted, digest)"
        " VALUES ('c', 'k', '{}', 1, 0, x'00')"
    )
    conn.close()

    assert detect_local(path).state is LocalState.READY
    with LocalStore(path) as store:
        store.put("c", "k2", {"v": store.put_attachment(b"x")})
    conn = sqlite3.connect(path)
    try:
        steps = [n for (n,) in conn.execute("SELECT name FROM _sqlite_migrations")]
    finally:
        conn.close()
    assert steps == list(SCHEMA_STEPS)
    assert detect_local(path).state is LocalState.READY


def test_a_damaged_attachments_table_is_detected(store):
    path = store.path
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE item_blobs")
    conn.close()
    found = detect_local(path)
    assert found.state is LocalState.CORRUPT and "item_blobs" in found.reason


def test_item_data_that_is_itself_a_typed_form_on_the_wire_stays_a_dict(store):
    form = {"$bytes": "AA=="}
    with store._writing("test") as conn:  # only the wire can bring such data
        from sdk._store.changes import take_remote

        take_remote(conn, [(("c", "k", canonical_json(form), 1, 0), 1)])
    assert store.get("c", "k")["data"] == form


def test_data_too_large_even_with_large_values_apart_is_refused_with_what_to_do(store):
    many = {f"k{i}": "x" * 1000 for i in range(8 * 1024)}  # 8 MiB of small values
    with pytest.raises(InvalidItemError, match="split it into several items"):
        store.put("c", "k", many)
    assert store.get("c", "k") is None


def test_an_attachment_the_store_does_not_know_is_refused_at_put(store):
    made_up = Attachment("c" * 64, 10, "image/png")
    with pytest.raises(InvalidItemError, match="put the content with put_attachment"):
        store.put("c", "k", {"photo": made_up})
    real = store.put_attachment(b"0123456789")
    with pytest.raises(InvalidItemError, match="does not know"):  # another size: not it
        store.put("c", "k", {"photo": Attachment(real.sha256, 11)})
    assert store.get("c", "k") is None
