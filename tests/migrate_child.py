"""A client process for the crash tests: migrates, and can freeze at a chosen point so
the test can kill it there with SIGKILL.

    python tests/migrate_child.py URL USER TOKEN STORE CACHE [PAUSE_PHASE [PAUSE_AFTER]]

It prints one line per event (``event NAME SESSION``), ``paused`` when it freezes, and
at the end ``result {json}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sdk import MigrationClient, MigrationOptions, Progress


def main() -> None:
    url, user, token, store, cache = sys.argv[1:6]
    pause_phase = sys.argv[6] if len(sys.argv) > 6 else None
    pause_after = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    seen = {"n": 0}

    def on_progress(progress: Progress) -> None:
        if progress.phase.value != pause_phase:
            return
        seen["n"] += 1
        if seen["n"] > pause_after:
            print("paused", flush=True)
            sys.stdin.read()  # frozen here until the test kills the process

    def on_event(event: object) -> None:
        print("event", type(event).__name__, getattr(event, "session_id", "-"), flush=True)

    with MigrationClient(
        server=url,
        user_id=user,
        token=token,
        store_path=Path(store),
        options=MigrationOptions(batch_size=10, max_in_flight=1, cache_dir=Path(cache)),
        on_progress=on_progress,
        on_event=on_event,
    ) as client:
        result = client.migrate()
    print(
        "result",
        json.dumps(
            {
                "session_id": result.session_id,
                "verified": result.verified,
                "resumed": result.resumed,
                "batches_uploaded": result.batches_uploaded,
                "item_count": result.item_count,
                "cloud_checksum": result.cloud_checksum,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
