"""`make bench`: attachment upload throughput, the SDK against a bare chunked upload.

The same bytes go to the same backend_stub on loopback, in the same run, twice per
round, each time as a new user's (blobs are stored once per user, so nothing is held
already):

- **SDK**: the content is put into a store (``put_attachment``, not timed), then the
  SDK's upload runs as a migration runs it (``upload_referenced``: query, each chunk read
  from the store a piece at a time, hashed, sent, then ``complete``);
- **bare**: the content in memory, cut into chunks of the protocol's size, each hashed
  and PUT with httpx, then ``complete``: the floor any client of this server has.

The figure is the median MiB/s of ``--repeat`` rounds, and the SDK's over the bare
upload's (target >= 0.8)::

    .venv/bin/python bench/attachments.py [--mib 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import backend_stub, token

CHUNK = 5 * 1024 * 1024


def content(mib: int) -> bytes:
    seed = hashlib.sha256(uuid.uuid4().bytes).digest()
    return (seed * (mib * 1024 * 1024 // 32 + 1))[: mib * 1024 * 1024]


def sdk_upload(url: str, folder: Path, data: bytes) -> float:
    """Seconds the SDK takes to upload ``data``, put as an attachment of an item."""
    from sdk import LocalStore
    from sdk._sync.attachments import upload_referenced
    from sdk._transport.http import Transport

    user = f"bench-sdk-{uuid.uuid4().hex[:8]}"
    store_path = folder / f"{user}.sqlite3"
    with LocalStore(store_path) as store:
        store.put("lessons", "l1", {"video": store.put_attachment(data, media_type="video/mp4")})
    with Transport.from_url(url, user_id=user, token=token(user), timeout=120) as transport:
        started = time.perf_counter()
        done = upload_referenced(transport, store_path)
        elapsed = time.perf_counter() - started
    assert done.bytes_sent == len(data), done
    return elapsed


def bare_upload(url: str, data: bytes) -> float:
    """Seconds a bare httpx client takes to upload ``data`` in chunks, then complete it."""
    import httpx

    user = f"bench-bare-{uuid.uuid4().hex[:8]}"
    sha = hashlib.sha256(data).hexdigest()
    headers = {"Authorization": f"Bearer {token(user)}"}
    with httpx.Client(base_url=f"{url}/api/migration/{user}", timeout=120) as client:
        started = time.perf_counter()
        view = memoryview(data)
        for index, start in enumerate(range(0, len(data), CHUNK)):
            chunk = view[start : start + CHUNK]
            answer = client.put(
                f"/blobs/{sha}/chunks/{index}",
                content=bytes(chunk),
                headers={
                    **headers,
                    "Content-Type": "application/octet-stream",
                    "X-Content-SHA256": hashlib.sha256(chunk).hexdigest(),
                    "X-Blob-Size": str(len(data)),
                },
            )
            answer.raise_for_status()
        client.post(
            f"/blobs/{sha}/complete", json={"size": len(data)}, headers=headers
        ).raise_for_status()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100, help="size of the attachment in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (the median is printed)")
    args = parser.parse_args()
    data = content(args.mib)
    sdk_times: list[float] = []
    bare_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, backend_stub(Path(tmp) / "server") as (url, _):
        for _round in range(args.repeat):
            # Alternate which goes first, so neither always meets a warmer disk cache.
            if _round % 2:
                bare_times.append(bare_upload(url, data))
                sdk_times.append(sdk_upload(url, Path(tmp), data))
            else:
                sdk_times.append(sdk_upload(url, Path(tmp), data))
                bare_times.append(bare_upload(url, data))
    sdk_rate = args.mib / statistics.median(sdk_times)
    bare_rate = args.mib / statistics.median(bare_times)
    print(f"attachment upload of {args.mib} MiB, median of {args.repeat} rounds:")
    print(f"  bare chunked upload (httpx): {bare_rate:8.1f} MiB/s")
    print(f"  SDK (upload_referenced):     {sdk_rate:8.1f} MiB/s")
    print(f"SDK / bare: {sdk_rate / bare_rate:.2f} x (target >= 0.8)")


if __name__ == "__main__":
    main()
