"""A client process for the crash tests: migrates, and can freeze at a chosen point so
the test can kill it there with SIGKILL.

    python tests/migrate_child.py URL USER TOKEN STORE CACHE [PAUSE_PHASE [PAUSE_AFTER]]

It prints one line per event (``event NAME SESSION``), one per progress report
(``progress PHASE DONE TOTAL``), ``paused`` when it freezes, and at the end
``result {json}`` (or ``error TYPE MESSAGE`` and exit status 3).

The chaos tests also crash it at the SDK's named failpoints, through the
``OFFLINE_MIGRATE_FAILPOINTS`` environment variable (``batch.sent=kill@3``), which the
SDK reads when the migration starts; ``MIGRATE_CHILD_IN_FLIGHT`` sets how many batches
are uploaded in parallel (default 1, so "the 3rd batch" means the same batch every run).
With ``MIGRATE_CHILD_SYNC=1`` it syncs instead (``sync`` result line).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sdk import MigrationClient, MigrationError, MigrationOptions, Progress, _failpoints


def main() -> int:
    url, user, token, store, cache = sys.argv[1:6]
    pause_phase = sys.argv[6] if len(sys.argv) > 6 else None
    pause_after = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    in_flight = int(os.environ.get("MIGRATE_CHILD_IN_FLIGHT", "1"))
    seen = {"n": 0}

    def on_progress(progress: Progress) -> None:
        print(
            "progress", progress.phase.value, progress.items_done, progress.items_total, flush=True
        )
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
        options=MigrationOptions(batch_size=10, max_in_flight=in_flight, cache_dir=Path(cache)),
        on_progress=on_progress,
        on_event=on_event,
    ) as client:
        try:
            if os.environ.get("MIGRATE_CHILD_SYNC"):
                _failpoints.configure_from_env()  # a sync reads no journal: set them here
                synced = client.sync()
                print(
                    "sync",
                    json.dumps(
                        {
                            "verified": synced.verified,
                            "pulled": synced.pulled,
                            "pushed": synced.pushed,
                            "pending": synced.pending_changes,
                        }
                    ),
                    flush=True,
                )
                return 0
            result = client.migrate()
        except MigrationError as exc:
            print("error", type(exc).__name__, str(exc).replace("\n", " "), flush=True)
            return 3
    print(
        "result",
        json.dumps(
            {
                "outcome": result.outcome.value,
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
