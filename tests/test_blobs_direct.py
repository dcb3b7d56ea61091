"""Direct attachment transfer on the aws backend (``MIGRATION_AWS_BLOB_DIRECT``), the way
it runs behind API Gateway + Lambda: chunks go from the SDK straight to S3 by presigned
URLs and downloads follow a redirect to S3, so the API never carries a blob's bytes.

Everything real: the API app, DynamoDB and S3 on moto (behind a recording front on
loopback, :mod:`blob_direct_fixtures`), the SDK; a child process killed mid-chunk."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aws_fixtures import AwsBackend, WorkerThread, fresh_aws_backend
from blob_direct_fixtures import S3Front, ThreadedApi, recording_app, s3_front  # noqa: F401
from server_fixtures import TestClient
from test_attachments_sync import SIZES, content
from test_crash import kill
from test_crash import run_child as child

from backend_stub import Settings, create_app, issue_token
from backend_stub.storage.blobs import owner_folder
from sdk import LocalStore, MigrationClient, MigrationOptions, RetryPolicy
from sdk._store.attachments import CHUNK_BYTES

CHUNK = CHUNK_BYTES


@dataclasses.dataclass
class DirectServer:
    settings: Settings
    app: Any
    client: TestClient
    front: S3Front
    aws: AwsBackend
    #: (method, path, body bytes) of every request the API received.
    bodies: list[tuple[str, str, int]]

    def token(self, user: str) -> str:
        return issue_token(user, self.settings.jwt_secret)

    def api(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def path(self, user: str, rest: str) -> str:
        return f"/api/migration/{user}/blobs{rest}"


@pytest.fixture
def direct(s3_front: S3Front, boto_session: Any) -> Iterator[DirectServer]:  # noqa: F811
    backend = fresh_aws_backend(s3_front.url, boto_session)
    backend = AwsBackend(dataclasses.replace(backend.settings, blob_direct=True), boto_session)
    settings = Settings(backend="aws", aws=backend.settings)
    bodies: list[tuple[str, str, int]] = []
    app = recording_app(create_app(settings, storage=backend.open()), bodies)
    s3_front.seen.clear()
    with (
        TestClient(app, base_url="http://testserver") as client,
        WorkerThread(backend.open(), settings),
    ):
        yield DirectServer(settings, app, client, s3_front, backend, bodies)


def device(server: DirectServer, folder: Path, user: str, http: httpx.Client | None = None):
    return MigrationClient(
        http_client=http or server.client,
        user_id=user,
        token=server.token(user),
        store_path=folder / "store.sqlite3",
        options=MigrationOptions(batch_size=50, cache_dir=folder / "cache"),
        retry=RetryPolicy.none(),
    )


def user_id() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def test_attachments_of_every_size_go_straight_to_s3_and_come_back_by_redirect(direct, tmp_path):
    user = user_id()
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        kept = {name: store.put_attachment(content(n, name.encode())) for name, n in SIZES.items()}
        for name, attachment in kept.items():
            store.put("cards", name, {"file": attachment})
    with device(direct, tmp_path / "a", user) as phone:
        assert phone.migrate().verified
        assert phone.verify().attachments_missing == 0

    puts = [s for s in direct.front.presigned() if s.method == "PUT"]
    # 0 B: no chunk; 1 B and a chunk: one each; a chunk and a bit: two.
    assert sorted(s.body for s in puts) == [1, 7, CHUNK, CHUNK]
    for put in puts:
        assert "authorization" not in put.headers  # no bearer token (nor anything) to S3
        assert put.headers["x-amz-checksum-sha256"] == put.body_sha256_b64
        signed = put.query["X-Amz-SignedHeaders"].split(";")
        assert {"x-amz-checksum-sha256", "content-length"} <= set(signed)
        assert owner_folder(user) in put.path
    # The API received no chunk, and no request body larger than the items' batches.
    assert not [b for b in direct.bodies if "/chunks/" in b[1]]
    assert max(b[2] for b in direct.bodies) < 64 * 1024

    direct.front.seen.clear()
    direct.bodies.clear()
    with device(direct, tmp_path / "b", user) as tablet:  # fetched during the sync
        assert tablet.sync().verified
    with LocalStore(tmp_path / "b" / "store.sqlite3") as store:
        for name, n in SIZES.items():
            assert store.read_attachment(kept[name]) == content(n, name.encode())
    gets = [s for s in direct.front.presigned() if s.method == "GET"]
    assert gets and all("authorization" not in s.headers for s in gets)
    assert all(s.headers["range"].startswith("bytes=") for s in gets)
    # One redirect per blob fetched, its URL reused for each 1 MiB range of the blob.
    api_gets = [b for b in direct.bodies if b[0] == "GET" and "/blobs/" in b[1]]
    assert len(api_gets) == 3 and len(gets) == 1 + 5 + 6

    answer = direct.client.get(
        direct.path(user, f"/{kept['one chunk'].sha256}"),
        headers={**direct.api(user), "Range": "bytes=0-9"},
        follow_redirects=False,
    )
    assert answer.status_code == 307
    assert answer.headers["location"].startswith(direct.front.url + "/")
    assert answer.headers["cache-control"] == "no-store"
    assert (
        httpx.get(answer.headers["location"], headers={"Range": "bytes=0-9"}).content
        == (content(CHUNK, b"one chunk")[:10])
    )


def test_a_client_killed_mid_chunk_resumes_sending_only_the_missing_chunks_to_s3(direct, tmp_path):
    user = user_id()
    film = content(3 * CHUNK + 5, b"film")
    sha = hashlib.sha256(film).hexdigest()
    store = tmp_path / "store.sqlite3"
    with LocalStore(store) as s:
        s.put("films", "f1", {"film": s.put_attachment(film, media_type="video/mp4")})
    api = ThreadedApi(direct.app)
    try:
        live = SimpleNamespace(url=api.url, token=direct.token)
        # A chunk goes in 1 MiB slices, 4 boundaries each: the 6th is inside chunk 1.
        proc = child(
            live,
            user,
            store,
            tmp_path / "cache",
            **{"OFFLINE_MIGRATE_FAILPOINTS": "blob.chunk.sending=kill@6"},
        )
        proc.wait(timeout=120)
        kill(proc)
        assert proc.returncode == -9
        state = direct.client.post(
            direct.path(user, "/query"), json={"blobs": [sha]}, headers=direct.api(user)
        ).json()["blobs"][0]
        assert state["held"] is False and state["receivedChunks"] == [0]  # half of 1 dropped

        direct.front.seen.clear()
        with httpx.Client(base_url=api.url) as http, device(direct, tmp_path, user, http) as c:
            assert c.migrate().verified
    finally:
        api.stop()
    parts = sorted(
        int(s.query["partNumber"]) for s in direct.front.presigned() if s.method == "PUT"
    )
    assert parts == [2, 3, 4]  # chunks 1, 2 and 3, once each
    assert not [b for b in direct.bodies if "/chunks/" in b[1]]
    location = direct.client.get(
        direct.path(user, f"/{sha}"), headers=direct.api(user), follow_redirects=False
    ).headers["location"]
    assert httpx.get(location).content == film


def test_an_expired_upload_url_is_asked_for_again(direct, tmp_path):
    user = user_id()
    data = content(CHUNK + 3, b"expiring")
    with LocalStore(tmp_path / "store.sqlite3") as store:
        store.put("cards", "c", {"file": store.put_attachment(data)})
    queries: list[dict[str, Any]] = []

    def expire_the_first_urls(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/blobs/query"):
            response.read()
            state = response.json()["blobs"][0]
            queries.append(state)
            if len(queries) == 2:  # the first with URLs: S3 will say the first expired
                url = state["chunkUrls"][0]["url"]
                direct.front.expired.update(parse_qs(urlsplit(url).query)["X-Amz-Signature"])

    direct.client.event_hooks["response"].append(expire_the_first_urls)
    with device(direct, tmp_path, user) as phone:
        assert phone.migrate().verified

    puts = [s for s in direct.front.presigned() if s.method == "PUT"]
    assert [len(q["chunkUrls"]) for q in queries[:3]] == [0, 2, 2]
    assert len(puts) == 3  # the refused one, then both chunks with fresh URLs
    assert int(puts[0].query["partNumber"]) == int(puts[1].query["partNumber"]) == 1


def test_another_users_blob_cannot_be_obtained_through_direct_transfer(direct, tmp_path):
    alice, bob = user_id(), user_id()
    data = content(CHUNK + 1, b"private")
    sha = hashlib.sha256(data).hexdigest()
    with LocalStore(tmp_path / "store.sqlite3") as store:
        store.put("cards", "c", {"file": store.put_attachment(data)})
    with device(direct, tmp_path, alice) as phone:
        assert phone.migrate().verified

    chunks = [hashlib.sha256(data[:CHUNK]).hexdigest(), hashlib.sha256(data[CHUNK:]).hexdigest()]
    plan = {"blobs": [sha], "uploads": [{"sha256": sha, "size": len(data), "chunks": chunks}]}
    seen = direct.client.post(direct.path(bob, "/query"), json=plan, headers=direct.api(bob))
    read = direct.client.get(
        direct.path(bob, f"/{sha}"), headers=direct.api(bob), follow_redirects=False
    )
    completed = direct.client.post(
        direct.path(bob, f"/{sha}/complete"), json={"size": len(data)}, headers=direct.api(bob)
    )

    state = seen.json()["blobs"][0]
    assert state["held"] is False and state["receivedChunks"] == []
    # Bob may upload under his own name only: his URLs never point at Alice's object.
    assert all(
        owner_folder(bob) in u["url"] and owner_folder(alice) not in u["url"]
        for u in state["chunkUrls"]
    )
    assert read.status_code == 404
    assert completed.status_code == 409
    location = direct.client.get(
        direct.path(alice, f"/{sha}"), headers=direct.api(alice), follow_redirects=False
    ).headers["location"]
    assert httpx.get(location).content == data


def test_a_query_checks_its_upload_plans(direct):
    user = "alice"
    sha = hashlib.sha256(b"ab").hexdigest()

    def ask(plan: dict[str, Any], blobs: list[str] | None = None) -> httpx.Response:
        body = {"blobs": blobs or [sha], "uploads": [plan]}
        return direct.client.post(direct.path(user, "/query"), json=body, headers=direct.api(user))

    not_listed = ask({"sha256": sha, "size": 2, "chunks": [sha]}, blobs=["cd" * 32])
    wrong_count = ask({"sha256": sha, "size": 2, "chunks": [sha, sha]})
    too_large = ask({"sha256": sha, "size": 2**40, "chunks": []})
    fine = ask({"sha256": sha, "size": 2, "chunks": [sha]})

    assert not_listed.status_code == wrong_count.status_code == 422
    assert too_large.status_code == 413
    assert fine.json()["directUpload"] is True
    detect = direct.client.get(
        f"/api/migration/{user}/detect",
        params={"hasLocalData": "false", "itemCount": 0},
        headers=direct.api(user),
    )
    assert "blobs-direct" in detect.json()["capabilities"]
    assert [u["index"] for u in fine.json()["blobs"][0]["chunkUrls"]] == [0]


def test_without_the_setting_the_aws_backend_ignores_upload_plans(aws_backend):
    settings = Settings(backend="aws", aws=aws_backend.settings)
    with TestClient(create_app(settings, storage=aws_backend.open())) as client:
        sha = hashlib.sha256(b"ab").hexdigest()
        answer = client.post(
            "/api/migration/alice/blobs/query",
            json={"blobs": [sha], "uploads": [{"sha256": sha, "size": 2, "chunks": [sha]}]},
            headers={"Authorization": f"Bearer {issue_token('alice', settings.jwt_secret)}"},
        )
        detect = client.get(
            "/api/migration/alice/detect",
            params={"hasLocalData": "false", "itemCount": 0},
            headers={"Authorization": f"Bearer {issue_token('alice', settings.jwt_secret)}"},
        )
    assert "blobs-direct" not in detect.json()["capabilities"]
    assert answer.json() == {
        "blobs": [
            {"sha256": sha, "held": False, "size": None, "receivedChunks": [], "chunkUrls": []}
        ],
        "directUpload": False,
    }


def test_an_expired_download_url_is_asked_for_again(direct, tmp_path):
    user = user_id()
    data = content(2 * 1024 * 1024 + 9, b"download")
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        store.put("cards", "c", {"file": store.put_attachment(data)})
    with device(direct, tmp_path / "a", user) as phone:
        assert phone.migrate().verified
    redirects: list[str] = []

    def expire_the_first_location(response: httpx.Response) -> None:
        if response.status_code == 307:
            redirects.append(response.headers["location"])
            if len(redirects) == 1:
                query = parse_qs(urlsplit(redirects[0]).query)
                direct.front.expired.update(query["X-Amz-Signature"])

    direct.front.seen.clear()
    direct.client.event_hooks["response"].append(expire_the_first_location)
    with device(direct, tmp_path / "b", user) as tablet:
        assert tablet.sync().verified
    with LocalStore(tmp_path / "b" / "store.sqlite3") as store:
        (item,) = store.iter_items()
        assert store.read_attachment(item["data"]["file"]) == data

    gets = [s for s in direct.front.presigned() if s.method == "GET"]
    assert len(redirects) == 2  # asked again once the first URL was refused
    assert len(gets) == 1 + 3  # the refused read, then 3 ranges of 1 MiB at most
    assert all("authorization" not in s.headers for s in gets)
