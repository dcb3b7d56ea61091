"""Corrupt, foreign, truncated and mutated stores, migrated end to end against the real app.

Each is either refused with a typed store or snapshot error whose message names the file
and says what to do (and then nothing reached the server and the file is byte for byte
as it was), or, when the damage is invisible to SQLite and to item validation, migrated
and verified like any store. Never another exception, never a hang.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos_fuzz import mutate
from chaos_harness import ServerView, key_of
from chaos_scenarios import InProcess, in_process
from sdk_fixtures import learning_items

from sdk import (
    CorruptStoreError,
    LocalStore,
    MigrationClient,
    MigrationError,
    MigrationOptions,
    MigrationOutcome,
    RetryPolicy,
    SnapshotError,
    StoreError,
)
from sdk._store.snapshot import take_snapshot

MUTANTS = 220
HANG = 30.0  # seconds; a refusal takes milliseconds


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    with in_process(tmp_path_factory.mktemp("store-faults"), seed=0) as server:
        yield server


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A store of ours spread over several pages, everything in the main file."""
    path = tmp_path_factory.mktemp("pristine") / "store.sqlite3"
    with LocalStore(path) as store:
        store.put_many(learning_items(90))
    return path.read_bytes()


def migrate_within(app: InProcess, store: Path) -> tuple[str, object]:
    """("refused" | "completed" | "crashed" | "hung", the error or the result)."""
    user = f"store-{uuid.uuid4().hex[:10]}"
    outcome: list[tuple[str, object]] = []

    def attempt() -> None:
        try:
            with MigrationClient(
                http_client=app.client,
                user_id=user,
                token=app.token(user),
                store_path=store,
                retry=RetryPolicy.none(),
                options=MigrationOptions(batch_size=50, cache_dir=store.parent / "cache"),
            ) as client:
                outcome.append(("completed", client.migrate()))
        except (StoreError, SnapshotError) as exc:
            outcome.append(("refused", exc))
        except BaseException as exc:  # anything else is the failure this looks for
            outcome.append(("crashed", exc))

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(HANG)
    if thread.is_alive():
        return "hung", user
    kind, value = outcome[0]
    check = {"refused": _nothing_uploaded, "completed": _verified}.get(kind)
    if check is not None:
        check(app, store, user, value)
    return kind, value


def _nothing_uploaded(app: InProcess, store: Path, user: str, error: object) -> None:
    assert isinstance(error, MigrationError)
    assert str(store) in str(error) or store.name in str(error), error
    # Damage in an item's data that SQLite does not see is found when its batch is built
    # to be sent (the snapshot takes the digests the store vouches for as they are): that
    # session is cancelled, its batches purged, before the snapshot that checks every item
    # refuses the store. Nothing of it reaches the cloud.
    view = ServerView(app.data_dir)
    sessions = view.sessions(user)
    assert all(s.status == "cancelled" for s in sessions), "a refused store reached the server"
    assert view.cloud(user) == {}, "a refused store reached the cloud"


def _verified(app: InProcess, store: Path, user: str, result: object) -> None:
    assert getattr(result, "outcome", None) is MigrationOutcome.COMPLETED
    assert getattr(result, "verified", False)
    with LocalStore(store, create=False) as s:
        local = {key_of(i): i for i in s.iter_items()}
    assert ServerView(app.data_dir).cloud(user) == local


def run_case(
    app: InProcess, tmp: Path, content: bytes, *, wal: bytes | None = None
) -> tuple[str, object]:
    folder = tmp / uuid.uuid4().hex[:8]
    folder.mkdir()
    store = folder / "store.sqlite3"
    store.write_bytes(content)
    if wal is not None:
        store.with_name(store.name + "-wal").write_bytes(wal)
    kind, value = migrate_within(app, store)
    assert kind in ("refused", "completed"), f"{kind}: {value!r}"
    if kind == "refused":
        assert hashlib.sha256(store.read_bytes()).digest() == hashlib.sha256(content).digest()
    return kind, value


def other_apps_database(path: Path) -> bytes:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes (body) VALUES (?)", [("hello",)] * 50)
    conn.commit()
    conn.close()
    return path.read_bytes()


def ours_but_rewritten(path: Path, pristine: bytes, sql: str) -> bytes:
    path.write_bytes(pristine)
    conn = sqlite3.connect(path)
    conn.executescript(sql)
    conn.close()
    return path.read_bytes()


FOREIGN_AND_BROKEN: list[tuple[str, Callable[[Path, bytes], bytes], type[StoreError]]] = [
    ("zero-bytes", lambda p, s: b"", StoreError),
    ("random-bytes", lambda p, s: random.Random(1).randbytes(len(s)), StoreError),
    ("sqlite-magic-then-noise", lambda p, s: s[:16] + random.Random(2).randbytes(8000), StoreError),
    ("another-apps-database", lambda p, s: other_apps_database(p), StoreError),
    (
        "our-id-but-no-tables",
        lambda p, s: ours_but_rewritten(p, s, "DROP TABLE items; DROP TABLE store_meta;"),
        StoreError,
    ),
    (
        "too-new",
        lambda p, s: ours_but_rewritten(
            p, s, "UPDATE store_meta SET value = '99' WHERE key = 'data_version';"
        ),
        StoreError,
    ),
    (
        "too-old",
        lambda p, s: ours_but_rewritten(
            p, s, "UPDATE store_meta SET value = '0' WHERE key = 'data_version';"
        ),
        StoreError,
    ),
    (
        "invalid-item",
        lambda p, s: ours_but_rewritten(
            p, s, "UPDATE items SET data = 'not json' WHERE key = 'item-000007';"
        ),
        StoreError,
    ),
]


@pytest.mark.parametrize(
    ("make", "error"), [pytest.param(m, e, id=name) for name, m, e in FOREIGN_AND_BROKEN]
)
def test_a_foreign_or_broken_store_is_refused_and_nothing_is_uploaded(
    app: InProcess,
    pristine: bytes,
    tmp_path: Path,
    make: Callable[[Path, bytes], bytes],
    error: type[StoreError],
) -> None:
    content = make(tmp_path / "made.sqlite3", pristine)

    kind, value = run_case(app, tmp_path, content)

    assert kind == "refused", value
    assert isinstance(value, (error, SnapshotError)), repr(value)


def truncation_points(size: int, page: int = 4096) -> list[int]:
    points = {1, 15, 16, 50, 99, 100, 101, 512, size - 1}
    for boundary in range(page, size, page):
        points.update((boundary - 1, boundary, boundary + 1, boundary + page // 2))
    return sorted(p for p in points if 0 < p < size)


def test_a_store_truncated_anywhere_is_refused_and_nothing_is_uploaded(
    app: InProcess, pristine: bytes, tmp_path: Path
) -> None:
    points = truncation_points(len(pristine))
    assert len(points) >= 20

    kinds = {at: run_case(app, tmp_path, pristine[:at])[0] for at in points}

    # Once a whole page is missing SQLite sees it; a cut inside the last page's unused
    # tail may be invisible, and then the store migrates, verified, like any other.
    whole_page_missing = [at for at in points if at <= len(pristine) - 4096]
    assert [kinds[at] for at in whole_page_missing] == ["refused"] * len(whole_page_missing)


def test_byte_flipped_stores_are_refused_cleanly_or_migrated_verified(
    app: InProcess, pristine: bytes, tmp_path: Path
) -> None:
    rng = random.Random(20240601)
    kinds: dict[str, int] = {}
    for _ in range(MUTANTS):
        kind, _ = run_case(app, tmp_path, mutate(pristine, rng))
        kinds[kind] = kinds.get(kind, 0) + 1

    assert sum(kinds.values()) == MUTANTS
    assert kinds.get("refused", 0) > MUTANTS // 10  # the damage was not all invisible


def test_a_garbage_or_torn_wal_beside_the_store_never_crashes_the_migration(
    app: InProcess, pristine: bytes, tmp_path: Path
) -> None:
    # A real WAL with committed frames, then torn and flipped copies of it.
    source = tmp_path / "with-wal.sqlite3"
    source.write_bytes(pristine)
    with contextlib.closing(sqlite3.connect(source)) as conn:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("UPDATE items SET updated_at = updated_at + 1 WHERE key < 'item-000020'")
        conn.commit()
        main, wal = source.read_bytes(), source.with_name(source.name + "-wal").read_bytes()
        assert len(wal) > 4096
        rng = random.Random(5)
        cases = [rng.randbytes(len(wal)), wal[: len(wal) // 2], wal[:32]]
        for _ in range(10):
            flipped = bytearray(wal)
            flipped[rng.randrange(len(flipped))] ^= 0xFF
            cases.append(bytes(flipped))

        kinds = [run_case(app, tmp_path, main, wal=case)[0] for case in cases]

    assert set(kinds) <= {"refused", "completed"}


# --------------------------------------------------------------------------- one of each
# Each damage below once escaped as the wrong error (or as no error at all until after the
# upload); the mutants above found them, these pin them down.


def rewritten(
    path: Path, pristine: bytes, *statements: str, writable_schema: bool = False
) -> bytes:
    path.write_bytes(pristine)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if writable_schema:
            conn.execute("PRAGMA writable_schema = ON")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()
    return path.read_bytes()


def swapped_keys(path: Path, pristine: bytes, pair: tuple[int, int] = (10, 40)) -> bytes:
    """Two keys of the same length swapped inside their pages, in the items table and in
    every index that holds them: the B-trees are out of order, which quick_check does not
    notice."""
    one, two = (f"item-{n:06d}".encode() for n in pair)
    marker = b"\x00swap\x00\x00\x00\x00"
    return pristine.replace(one, marker).replace(two, one).replace(marker, two)


DAMAGED: list[tuple[str, Callable[[Path, bytes], bytes]]] = [
    ("keys-out-of-order", swapped_keys),
    (
        # SQLite's own message then quotes bytes that are not UTF-8.
        "schema-syntax-not-utf8",
        lambda p, s: rewritten(
            p,
            s,
            "UPDATE sqlite_master SET sql = replace(sql, 'CREATE TABLE', 'CREATE T' || X'A5'"
            " || 'BLE') WHERE name = 'items'",
            writable_schema=True,
        ),
    ),
    (
        "check-constraint-not-utf8",
        lambda p, s: rewritten(
            p,
            s,
            "UPDATE sqlite_master SET sql = replace(sql, 'CHECK (deleted', 'CHECK (del' ||"
            " X'9c' || 'ted') WHERE name = 'items'",
            writable_schema=True,
        ),
    ),
    (
        "column-renamed",
        lambda p, s: rewritten(p, s, "ALTER TABLE items RENAME COLUMN updated_at TO updated_xx"),
    ),
    (
        "device-id-damaged",
        lambda p, s: rewritten(
            p, s, "UPDATE store_meta SET value = 'not a device id!' WHERE key = 'device_id'"
        ),
    ),
    (
        "migrations-table-damaged",
        lambda p, s: rewritten(
            p, s, "ALTER TABLE _sqlite_migrations RENAME COLUMN applied_at TO applied_xx"
        ),
    ),
    (
        "migrations-table-text-not-utf8",
        lambda p, s: rewritten(
            p, s, "UPDATE _sqlite_migrations SET applied_at = CAST(X'9c' AS TEXT)"
        ),
    ),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=name) for name, m in DAMAGED])
def test_damage_is_named_as_a_damaged_store_before_anything_is_uploaded(
    app: InProcess, pristine: bytes, tmp_path: Path, make: Callable[[Path, bytes], bytes]
) -> None:
    content = make(tmp_path / "made.sqlite3", pristine)

    kind, error = run_case(app, tmp_path, content)

    assert kind == "refused", error
    assert isinstance(error, CorruptStoreError), repr(error)
    assert "damaged" in str(error)


def test_keys_out_of_order_inside_a_batch_planned_at_once_are_named_as_damage(
    pristine: bytes, tmp_path: Path
) -> None:
    # A trusting snapshot plans a batch of vouched rows at once once its collection has
    # begun: flashcards' third batch of 10 holds both swapped keys (items 70 and 79).
    store = tmp_path / "store.sqlite3"
    store.write_bytes(swapped_keys(tmp_path / "made.sqlite3", pristine, (70, 79)))

    with pytest.raises(CorruptStoreError, match="damaged"):
        take_snapshot(
            store, tmp_path / "cache", batch_size=10, max_batch_bytes=1 << 20, trust_digests=True
        )


@pytest.mark.parametrize(
    "make",
    # The migrations table is sqlite-utils' bookkeeping: only opening the store reads it.
    [pytest.param(m, id=name) for name, m in DAMAGED if not name.startswith("migrations")],
)
@pytest.mark.parametrize("trust", [False, True], ids=["checking", "trusting"])
def test_take_snapshot_on_its_own_names_the_damage_too(
    pristine: bytes, tmp_path: Path, make: Callable[[Path, bytes], bytes], trust: bool
) -> None:
    # Taking the digests the store vouches for as they are changes none of this: the
    # plan still checks the file, the schema and the keys' order (a batch of 20 holds
    # both swapped keys; see also the test above for a batch planned at once).
    store = tmp_path / "store.sqlite3"
    store.write_bytes(make(tmp_path / "made.sqlite3", pristine))

    with pytest.raises(CorruptStoreError, match="damaged"):
        take_snapshot(
            store, tmp_path / "cache", batch_size=20, max_batch_bytes=1 << 20, trust_digests=trust
        )
    assert list((tmp_path / "cache").glob("*")) == []
