"""Attachments and large values against the real server: uploaded before a migration's
``complete`` and a sync's push, stored once per content, resumed after a crash, fetched
by a pull eagerly or on first use, proven by ``verify``."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from sdk import (
    Attachment,
    AttachmentMissingError,
    LocalStore,
    MigrationClient,
    MigrationOptions,
    RetryPolicy,
    _failpoints,
)
from sdk._store.attachments import CHUNK_BYTES
from sdk.contract import EMPTY_SHA256


def device(server, folder: Path, user: str = "alice", **options) -> MigrationClient:
    return MigrationClient(
        http_client=server.client,
        user_id=user,
        token=server.token(user),
        store_path=folder / "store.sqlite3",
        options=MigrationOptions(batch_size=50, cache_dir=folder / "cache", **options),
        retry=RetryPolicy.none(),
    )


@pytest.fixture
def requests(server):
    """``(method, path tail)`` of every request the SDK sends to the server."""
    seen: Counter[tuple[str, str]] = Counter()

    def record(request: httpx.Request) -> None:
        tail = request.url.path.split("/", 4)[-1]  # after /api/migration/{user}/
        kind = "chunk" if "/chunks/" in tail else tail.split("/")[0]
        seen[(request.method, kind)] += 1

    server.client.event_hooks["request"].append(record)
    yield seen
    server.client.event_hooks["request"].remove(record)


def held_by_cloud(server, user: str, shas: list[str]) -> list[bool]:
    answer = server.client.post(
        f"/api/migration/{user}/blobs/query",
        json={"blobs": shas},
        headers={"Authorization": f"Bearer {server.token(user)}"},
    )
    assert answer.status_code == 200, answer.text
    return [state["held"] for state in answer.json()["blobs"]]


def cloud_blob(server, user: str, sha: str) -> bytes:
    answer = server.client.get(
        f"/api/migration/{user}/blobs/{sha}",
        headers={"Authorization": f"Bearer {server.token(user)}"},
    )
    assert answer.status_code == 200, answer.text
    return answer.content


SIZES = {"empty": 0, "one byte": 1, "one chunk": CHUNK_BYTES, "chunk and a bit": CHUNK_BYTES + 7}


def content(size: int, salt: bytes = b"") -> bytes:
    return (hashlib.sha256(salt).digest() * (size // 32 + 1))[:size]


def test_a_migration_uploads_every_attachment_and_a_large_value_and_verify_proves_them(
    server, tmp_path, requests
):
    big = content(7 * 1024 * 1024, b"recording")  # over a batch's bytes, were it inline
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        kept = {name: store.put_attachment(content(n, name.encode())) for name, n in SIZES.items()}
        for name, attachment in kept.items():
            store.put("cards", name, {"file": attachment, "raw": b"\x00"})
        store.put("recordings", "r1", {"audio": big})
        store.put("cards", "same file again", {"file": kept["one chunk"]})

    with device(server, tmp_path / "a") as client:
        result = client.migrate()
        status = client.verify()

    assert result.verified and status.verified and status.attachments_missing == 0
    shas = [a.sha256 for a in kept.values()] + [hashlib.sha256(big).hexdigest()]
    assert held_by_cloud(server, "alice", shas) == [True] * 5
    assert cloud_blob(server, "alice", kept["chunk and a bit"].sha256) == content(
        CHUNK_BYTES + 7, b"chunk and a bit"
    )
    # Each content once: 0 + 1 + 1 + 2 chunks, and 2 for the 7 MiB value.
    assert requests[("PUT", "chunk")] == 6
    assert requests[("POST", "blobs")] >= 1


def test_the_same_attachment_on_a_second_device_sends_no_chunk_and_arrives_eagerly(
    server, tmp_path, requests
):
    photo = content(CHUNK_BYTES + 1, b"photo")
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        store.put("cards", "c1", {"photo": store.put_attachment(photo, media_type="image/png")})
    with device(server, tmp_path / "a") as client:
        assert client.migrate().verified
    sent_by_a = requests[("PUT", "chunk")]

    with LocalStore(tmp_path / "b" / "store.sqlite3") as store:
        again = store.put_attachment(photo, media_type="image/png")
        store.put("cards", "c2", {"photo": again})
    with device(server, tmp_path / "b") as client:
        assert client.sync().verified  # pushes c2, pulls c1

    assert sent_by_a == 2 and requests[("PUT", "chunk")] == 2  # the second device: none
    with LocalStore(tmp_path / "b" / "store.sqlite3") as store:
        assert store.get("cards", "c1")["data"]["photo"] == again
        assert store.read_attachment(again) == photo

    with device(server, tmp_path / "c") as client:  # a new device, eager (the default)
        assert client.sync().verified
    with LocalStore(tmp_path / "c" / "store.sqlite3") as store:
        assert store.read_attachment(store.get("cards", "c2")["data"]["photo"]) == photo


def test_a_lazy_device_fetches_an_attachment_on_first_use(server, tmp_path, requests):
    note = content(3 * 1024, b"note")
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        store.put("notes", "n1", {"pdf": store.put_attachment(note, media_type="application/pdf")})
    with device(server, tmp_path / "a") as client:
        assert client.migrate().verified

    with device(server, tmp_path / "b", fetch_attachments="lazy") as client:
        assert client.sync().verified
        assert requests[("GET", "blobs")] == 0
        with LocalStore(client.store_path) as store:
            pdf = store.get("notes", "n1")["data"]["pdf"]
            assert isinstance(pdf, Attachment) and pdf.media_type == "application/pdf"
            with pytest.raises(AttachmentMissingError, match="sync while online"):
                store.read_attachment(pdf)
            store.fetch_attachment = client.fetch_attachment  # fetched on first use
            assert store.read_attachment(pdf) == note
    assert requests[("GET", "blobs")] == 1


def test_an_upload_stopped_after_a_chunk_resumes_with_only_the_chunks_the_server_lacks(
    server, tmp_path, requests
):
    film = content(3 * CHUNK_BYTES + 5, b"film")
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        store.put("films", "f1", {"film": store.put_attachment(film)})
    _failpoints.enable("blob.chunk.sent", "raise", at=2)
    try:
        with device(server, tmp_path / "a") as client, pytest.raises(_failpoints.FailpointError):
            client.migrate()
    finally:
        _failpoints.reset()
    assert requests[("PUT", "chunk")] == 2
    assert held_by_cloud(server, "alice", [hashlib.sha256(film).hexdigest()]) == [False]

    with device(server, tmp_path / "a") as client:
        assert client.migrate().verified

    assert requests[("PUT", "chunk")] == 4  # 2 before, the 2 the server lacked after
    assert cloud_blob(server, "alice", hashlib.sha256(film).hexdigest()) == film


def test_an_empty_attachment_is_completed_without_chunks(server, tmp_path, requests):
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        empty = store.put_attachment(b"", media_type="text/plain")
        store.put("notes", "n", {"body": empty})
    with device(server, tmp_path / "a") as client:
        assert client.migrate().verified
    assert empty.sha256 == EMPTY_SHA256 and requests[("PUT", "chunk")] == 0
    assert held_by_cloud(server, "alice", [EMPTY_SHA256]) == [True]


def test_a_download_cut_off_resumes_by_range_where_it_stopped(server, tmp_path, requests):
    lesson = content(3 * 1024 * 1024 + 100, b"lesson")  # 4 ranges of at most 1 MiB
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        store.put("lessons", "l1", {"pdf": store.put_attachment(lesson)})
    with device(server, tmp_path / "a") as client:
        assert client.migrate().verified

    _failpoints.enable("blob.chunk.fetched", "raise", at=2)
    try:
        with device(server, tmp_path / "b") as client, pytest.raises(_failpoints.FailpointError):
            client.sync()
    finally:
        _failpoints.reset()
    assert requests[("GET", "blobs")] == 2
    with (
        LocalStore(tmp_path / "b" / "store.sqlite3") as store,
        pytest.raises(AttachmentMissingError),  # half of it: not whole, not readable
    ):
        store.read_attachment(store.get("lessons", "l1")["data"]["pdf"])

    with device(server, tmp_path / "b") as client:
        assert client.sync().verified

    assert requests[("GET", "blobs")] == 4  # the two ranges it lacked, not all four again
    with LocalStore(tmp_path / "b" / "store.sqlite3") as store:
        assert store.read_attachment(store.get("lessons", "l1")["data"]["pdf"]) == lesson


def test_chunks_the_server_lost_before_complete_are_sent_again(server, tmp_path, requests):
    film = content(2 * CHUNK_BYTES, b"expired")
    sha = hashlib.sha256(film).hexdigest()
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        store.put("films", "f1", {"film": store.put_attachment(film)})

    def server_loses_the_upload() -> None:  # as an expired upload would be
        (folder,) = (p for p in Path(server.settings.data_dir).rglob(sha) if p.is_dir())
        shutil.rmtree(folder)

    _failpoints.enable("blob.chunks.sent", server_loses_the_upload)
    try:
        with device(server, tmp_path / "a") as client:
            assert client.migrate().verified
    finally:
        _failpoints.reset()

    assert requests[("PUT", "chunk")] == 4  # both chunks, then both again
    assert cloud_blob(server, "alice", sha) == film


def test_a_snapshot_copied_without_the_attachment_tables_still_uploads_from_the_store(
    server, tmp_path
):
    from sdk._sync.attachments import upload_referenced
    from sdk._transport.http import Transport

    photo = content(CHUNK_BYTES + 3, b"slim")
    store_path = tmp_path / "store.sqlite3"
    with LocalStore(store_path) as store:
        store.put("cards", "c1", {"photo": store.put_attachment(photo), "n": 1})
        store.put("cards", "c2", {"n": 2})
    slim = tmp_path / "slim.sqlite3"  # only the items, as a leaner snapshot might copy
    conn = sqlite3.connect(slim)
    conn.execute("ATTACH ? AS store", (str(store_path),))
    conn.execute("CREATE TABLE items AS SELECT * FROM store.items")
    conn.commit()
    conn.close()

    with Transport(server.client, user_id="alice", token=server.token("alice")) as transport:
        done = upload_referenced(transport, slim, content_from=store_path)

    assert (done.referenced, done.uploaded, done.chunks_sent) == (1, 1, 2)
    assert cloud_blob(server, "alice", hashlib.sha256(photo).hexdigest()) == photo


def test_an_attachment_put_after_the_migration_is_uploaded_before_the_push(
    server, tmp_path, requests
):
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        store.put("cards", "c1", {"front": "hola"})
    with device(server, tmp_path / "a") as client:
        assert client.migrate().verified
        assert requests[("PUT", "chunk")] == 0
        drawing = content(CHUNK_BYTES + 9, b"drawing")
        with LocalStore(client.store_path) as store:
            store.put("cards", "c1", {"front": "hola", "drawing": store.put_attachment(drawing)})
        before = client.verify()
        assert not before.verified and before.attachments_missing == 1

        assert client.sync().verified
        after = client.verify()

    assert after.verified and after.attachments_missing == 0
    assert requests[("PUT", "chunk")] == 2
    assert cloud_blob(server, "alice", hashlib.sha256(drawing).hexdigest()) == drawing


def test_the_upload_uses_the_chunk_size_the_server_advertises(tmp_path):
    from server_fixtures import TestClient

    from backend_stub import Settings, create_app
    from sdk.contract import Limits

    settings = Settings(data_dir=tmp_path / "server", limits=Limits(blob_chunk_bytes=1_500_000))
    with TestClient(create_app(settings), base_url="http://testserver") as http:
        server = SimpleNamespace(client=http, token=server_token)
        seen: Counter[str] = Counter()
        http.event_hooks["request"].append(
            lambda request: seen.update(["chunk"] if "/chunks/" in request.url.path else [])
        )
        film = content(4_000_000, b"odd chunks")
        with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
            store.put("films", "f1", {"film": store.put_attachment(film)})
        with device(server, tmp_path / "a") as client:
            assert client.migrate().verified
        assert seen["chunk"] == 3  # 1.5 MB, 1.5 MB and the rest
        assert cloud_blob(server, "alice", hashlib.sha256(film).hexdigest()) == film


def server_token(user: str) -> str:
    from backend_stub import Settings, issue_token

    return issue_token(user, Settings().jwt_secret)


def test_a_pulled_reference_the_cloud_cannot_serve_does_not_stop_the_sync(server, tmp_path):
    from backend_stub import seed_cloud_items

    ghost = Attachment("d" * 64, 5, "image/png")
    item = {"collection": "cards", "key": "c1", "data": {"photo": ghost.to_json()}}
    seed_cloud_items(server.storage, "alice", [item | {"updatedAt": 9, "deleted": False}])

    with device(server, tmp_path / "b") as client:
        assert client.sync().verified  # the items are in step; the blob is not fetchable
        status = client.verify()
        with LocalStore(client.store_path) as store:
            assert store.get("cards", "c1")["data"]["photo"] == ghost
            with pytest.raises(AttachmentMissingError, match="sync while online"):
                store.read_attachment(ghost)
    assert not status.verified and status.attachments_missing == 1


def test_the_upload_reports_its_progress_in_bytes(server, tmp_path):
    from sdk import Progress, ProgressPhase

    film = content(2 * CHUNK_BYTES + 1, b"progress")
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        store.put("films", "f1", {"film": store.put_attachment(film)})
    seen: list[Progress] = []
    with MigrationClient(
        http_client=server.client,
        user_id="alice",
        token=server.token("alice"),
        store_path=tmp_path / "a" / "store.sqlite3",
        options=MigrationOptions(cache_dir=tmp_path / "a" / "cache"),
        on_progress=seen.append,
    ) as client:
        assert client.migrate().verified

    sending = [(p.bytes_done, p.bytes_total) for p in seen if p.bytes_total == len(film)]
    assert [done for done, _ in sending] == [CHUNK_BYTES, 2 * CHUNK_BYTES, len(film), len(film)]
    assert all(p.phase is ProgressPhase.COMPLETING for p in seen if p.bytes_total == len(film))
    overall = [p.overall for p in seen]
    assert overall == sorted(overall)  # never backwards


def test_a_legacy_table_with_a_seven_mib_blob_migrates_and_its_blob_reads_back(server, tmp_path):
    from sdk import LegacyTable, import_legacy

    recording = content(7 * 1024 * 1024, b"legacy")
    legacy = tmp_path / "old.db"
    conn = sqlite3.connect(legacy)
    conn.execute("CREATE TABLE recordings (id INTEGER PRIMARY KEY, audio BLOB, empty BLOB)")
    conn.execute("INSERT INTO recordings VALUES (1, ?, ?)", (recording, b""))
    conn.commit()
    conn.close()
    store_path = tmp_path / "a" / "store.sqlite3"
    assert import_legacy(legacy, store_path, [LegacyTable(table="recordings")]).written == 1

    with device(server, tmp_path / "a") as client:
        assert client.migrate().verified
    with device(server, tmp_path / "b") as client:
        assert client.sync().verified
    with LocalStore(tmp_path / "b" / "store.sqlite3") as store:
        data = store.get("recordings", "1")["data"]
    assert data == {"id": 1, "audio": recording, "empty": b""}
