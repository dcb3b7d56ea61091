"""The SDK stays light: it runs with its declared dependencies only, and optional extras
(orjson, rich, the server's and AWS's libraries) never enter its import path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from sdk_fixtures import learning_items, make_store

from sdk import MigrationClient, MigrationOptions, RetryPolicy, _fastjson
from sdk.contract import dataset_checksum_of

ROOT = Path(__file__).resolve().parent.parent

#: Installed for tests and the server, never needed by the SDK on a device.
OPTIONAL = (
    "orjson",
    "rich",
    "fastapi",
    "starlette",
    "uvicorn",
    "jwt",
    "boto3",
    "botocore",
    "mangum",
    "moto",
    "zstandard",
    "tkinter",
)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_sdk_loads_none_of_the_optional_extras() -> None:
    done = run_python(
        f"""
        import sys
        def loaded(): return sorted(m for m in {OPTIONAL!r} if m in sys.modules)
        import httpx  # a dependency: its own CLI pulls in rich when rich is installed
        print(loaded())
        import sdk
        print(loaded())
        import sdk.cli
        print(loaded())
        """
    )
    assert done.returncode == 0, done.stderr
    by_httpx, by_sdk, by_cli = done.stdout.splitlines()
    assert by_sdk == by_httpx
    assert by_cli == by_httpx  # the CLI's progress bar imports rich only when it draws


def test_the_sdk_works_with_only_its_declared_dependencies(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store.sqlite3", learning_items(30))
    done = run_python(
        f"""
        import sys
        sys.modules.update(dict.fromkeys({OPTIONAL!r}))  # as if not installed
        from pathlib import Path
        from sdk import LocalState, LocalStore, detect_local
        from sdk._snapshot import take_snapshot
        from sdk import _fastjson
        assert not _fastjson.orjson_in_use()
        store = Path({str(store)!r})
        assert detect_local(store).state is LocalState.READY
        with LocalStore(store) as s:
            s.put("prefs", "theme", {{"dark": True, "tiny": 1e-07}})
        snap = take_snapshot(store, Path({str(tmp_path / "cache")!r}), batch_size=10,
                             max_batch_bytes=1 << 20)
        with snap:
            print(snap.item_count, snap.dataset_checksum)
        """
    )
    assert done.returncode == 0, done.stderr
    count, checksum = done.stdout.split()
    extra = {"collection": "prefs", "key": "theme", "data": {}, "updatedAt": 0, "deleted": False}
    items = [*learning_items(30), extra]
    assert int(count) == len(items)
    assert len(checksum) == 64


def test_a_migration_without_orjson_gives_the_checksum_it_gives_with_it(
    server, tmp_path, monkeypatch
) -> None:
    # Floats orjson prints differently, a huge integer, nulls: the stdlib must decide.
    items = learning_items(120)
    for n, item in enumerate(items[:6]):
        item["data"] = {"tiny": 10.0 ** -(5 + n), "big": 2**70 + n, "none": None}
    expected = dataset_checksum_of(items)
    verified = {}
    for path in ("orjson", "stdlib"):
        if path == "stdlib":
            monkeypatch.setattr(_fastjson, "_orjson", None)
        user = f"packaging-{path}"
        store = make_store(tmp_path / f"{path}.sqlite3", items)
        with MigrationClient(
            http_client=server.client,
            user_id=user,
            token=server.token(user),
            store_path=store,
            retry=RetryPolicy.none(),
            options=MigrationOptions(batch_size=25, cache_dir=tmp_path / f"cache-{path}"),
        ) as client:
            result = client.migrate()
        assert result.verified
        verified[path] = client.summary().summary.dataset_checksum
    assert _fastjson.orjson_in_use() is False  # the second run was on the stdlib
    assert verified == {"orjson": expected, "stdlib": expected}
