"""Attachments through the aws backend (S3 multipart on moto, on loopback): migrated,
stored once per content, fetched by a second device, proven by ``verify``."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import httpx
from test_attachments_sync import SIZES, content, held_by_cloud
from test_aws_migrate import aws_server  # noqa: F401 (the fixture)

from sdk import LocalStore, MigrationClient, MigrationOptions, RetryPolicy


def device(server, folder: Path, user: str = "alice") -> MigrationClient:
    return MigrationClient(
        http_client=server.client,
        user_id=user,
        token=server.token(user),
        store_path=folder / "store.sqlite3",
        options=MigrationOptions(batch_size=50, cache_dir=folder / "cache"),
        retry=RetryPolicy.none(),
    )


def test_attachments_migrate_once_per_content_and_reach_a_second_device_on_aws(
    aws_server,  # noqa: F811
    tmp_path,
):
    chunk_puts: Counter[str] = Counter()

    def count(request: httpx.Request) -> None:
        if "/chunks/" in request.url.path:
            chunk_puts[request.method] += 1

    aws_server.client.event_hooks["request"].append(count)
    big = content(7 * 1024 * 1024, b"recording")
    with LocalStore(tmp_path / "a" / "store.sqlite3") as store:
        kept = {name: store.put_attachment(content(n, name.encode())) for name, n in SIZES.items()}
        for name, attachment in kept.items():
            store.put("cards", name, {"file": attachment, "again": attachment})
        store.put("recordings", "r1", {"audio": big})

    with device(aws_server, tmp_path / "a") as phone:
        assert phone.migrate().verified
        assert phone.verify().attachments_missing == 0
    assert chunk_puts["PUT"] == 6  # 0 + 1 + 1 + 2 chunks, and 2 for the 7 MiB value

    with device(aws_server, tmp_path / "b") as tablet:  # eager: fetched during the sync
        assert tablet.sync().verified
    with LocalStore(tmp_path / "b" / "store.sqlite3") as store:
        for name, n in SIZES.items():
            assert store.read_attachment(kept[name]) == content(n, name.encode())
        assert store.get("recordings", "r1")["data"]["audio"] == big
    assert chunk_puts["PUT"] == 6  # the second device sent none
    shas = [a.sha256 for a in kept.values()] + [hashlib.sha256(big).hexdigest()]
    assert held_by_cloud(aws_server, "alice", shas) == [True] * 5
