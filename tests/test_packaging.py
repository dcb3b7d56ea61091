"""The SDK stays light: it runs with its declared dependencies only, and optional extras
(orjson, rich, the server's and AWS's libraries) never enter its import path. What is
published is what an integrator needs: the code, the license, the user-facing extras; no
development tools as extras, and no user data left in the checkout."""

from __future__ import annotations

import email
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from sdk_fixtures import learning_items, make_store

from sdk import MigrationClient, MigrationOptions, RetryPolicy, _fastjson
from sdk.contract import dataset_checksum_of

ROOT = Path(__file__).resolve().parent.parent

#: Installed for tests and the server, never needed by the SDK on a device.
OPTIONAL = (
    "pydantic",
    "pydantic_core",
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
        from sdk._store.snapshot import take_snapshot
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


#: The extras an integrator installs; development tools live in [dependency-groups].
USER_FACING_EXTRAS = {"server", "aws", "cli", "fast"}

#: What following the README leaves in a checkout: none of it may ship.
USER_DATA = (
    "store.sqlite3",
    "store.sqlite3-wal",
    "store.sqlite3.migration-journal",
    "store.sqlite3.migration-lock",
    "items.jsonl",
    "server-data/migration.sqlite3",
    "migration-data/migration.sqlite3",
    "examples/app-v1.db",
)


def build_sdist(tmp_path: Path) -> tarfile.TarFile:
    """Builds the sdist of a copy of this checkout into which a user's data was dropped."""
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT,
        checkout,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", ".*_cache", ".hypothesis", "dist", "build"
        ),
    )
    for name in USER_DATA:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_bytes(b"a user's data")
    done = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path / "dist")],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    return tarfile.open(sdist)


def test_the_sdist_ships_the_code_and_license_and_no_user_data(tmp_path: Path) -> None:
    with build_sdist(tmp_path) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        info = sdist.extractfile(next(n for n in sdist.getnames() if n.endswith("/PKG-INFO")))
        assert info is not None
        metadata = email.message_from_bytes(info.read())

    assert {"LICENSE", "pyproject.toml", "sdk/__init__.py", "backend_stub/app.py"} <= names
    assert not set(USER_DATA) & names
    leaked = [n for n in names if n.endswith((".sqlite3", ".jsonl", ".db", "-journal", "-lock"))]
    assert leaked == []
    assert set(metadata.get_all("Provides-Extra") or []) == USER_FACING_EXTRAS
    assert metadata["License-Expression"] == "MIT"
    assert "License-File" in metadata
    assert any(
        c.startswith("Programming Language :: Python :: 3")
        for c in metadata.get_all("Classifier") or []
    )


def test_the_installed_distribution_publishes_only_user_facing_extras() -> None:
    installed = importlib.metadata.metadata("offline-migrate")
    assert set(installed.get_all("Provides-Extra") or []) == USER_FACING_EXTRAS
    requirements = installed.get_all("Requires-Dist") or []
    for tool in ("pytest", "moto", "schemathesis", "hypothesis", "respx", "ruff", "mypy"):
        assert not [r for r in requirements if r.startswith(tool)], tool


def test_gitignore_covers_what_the_readme_and_the_sdk_leave_in_a_checkout() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *USER_DATA],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    unignored = [line.split("\t")[-1] for line in done.stdout.splitlines() if line.startswith("::")]
    assert unignored == []
