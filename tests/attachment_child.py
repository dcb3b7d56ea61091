"""A client process for the attachment memory test: puts a large file as an attachment
through its path, migrates it, and reports its peak memory against its own baseline.

    python tests/attachment_child.py URL USER TOKEN FOLDER SIZE_MIB

The file is generated in FOLDER a MiB at a time (never held whole). It prints
``baseline KIB`` once the SDK, httpx and a store are loaded and a small migration-sized
amount of work is done, ``peak KIB`` (``ru_maxrss``) after the attachment is put,
migrated and verified, and ``result {json}``.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
from pathlib import Path

from sdk import LocalStore, MigrationClient, MigrationOptions


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def main() -> int:
    url, user, token, folder, size_mib = sys.argv[1:6]
    root = Path(folder)
    store_path = root / "store.sqlite3"
    with LocalStore(store_path) as store:
        store.put("warm-up", "w", {"small": b"x" * 1024})  # every code path loaded
    source = root / "lesson.mp4"
    digest = hashlib.sha256()
    with source.open("wb") as file:
        block = bytearray(1024 * 1024)
        for n in range(int(size_mib)):
            block[:8] = n.to_bytes(8, "big")
            digest.update(block)
            file.write(block)
    print("baseline", peak_kib(), flush=True)
    with LocalStore(store_path) as store:
        video = store.put_attachment(source, media_type="video/mp4")
        store.put("lessons", "l1", {"video": video})
    print("stored", peak_kib(), flush=True)
    with MigrationClient(
        server=url,
        user_id=user,
        token=token,
        store_path=store_path,
        options=MigrationOptions(cache_dir=root / "cache"),
    ) as client:
        result = client.migrate()
        status = client.verify()
    print("peak", peak_kib(), flush=True)
    print(
        "result",
        json.dumps(
            {
                "verified": result.verified and status.verified,
                "sha256": video.sha256,
                "expected": digest.hexdigest(),
                "size": video.size,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
