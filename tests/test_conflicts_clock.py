"""``newest_wins`` under clock skew: the device's clock runs ahead of or behind the
server's, and the truly later edit still wins.

The documented winner: the side whose ``updatedAt``, on the server's clock (the device's
timestamps minus the offset measured at detect/start), is later by more than the offset's
uncertainty plus ``skew_tolerance_ms``; closer than that, the item is flagged ``too_close``
and the policy's ``fallback`` decides. The skew is injected through the server's clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from server_fixtures import TestClient

from backend_stub import Settings, create_app, issue_token, seed_cloud_items
from sdk import (
    ConflictPolicy,
    LocalStore,
    MigrationClient,
    MigrationOptions,
    MigrationOutcome,
    OfflineError,
    RetryPolicy,
)
from sdk._store.local import now_ms
from sdk.contract import Item

MINUTE = 60_000
HOUR = 60 * MINUTE

SKEWS = [
    pytest.param(-24 * HOUR, id="device 24 h behind"),
    pytest.param(-288_000, id="device 288 s behind"),
    pytest.param(0, id="in sync"),
    pytest.param(288_000, id="device 288 s ahead"),
    pytest.param(24 * HOUR, id="device 24 h ahead"),
]


@contextmanager
def skewed_server(tmp_path: Path, skew_ms: int) -> Iterator[TestClient]:
    """The real app whose clock is ``skew_ms`` behind this (the device's) clock."""
    settings = Settings(data_dir=tmp_path / "server")

    def server_clock() -> int:
        return now_ms() - skew_ms

    with TestClient(
        create_app(settings, clock=server_clock), base_url="http://testserver"
    ) as client:
        yield client


def wire(collection: str, key: str, value: str, at: int) -> Item:
    return Item(collection=collection, key=key, data={"v": value}, updatedAt=at, deleted=False)


def edits(skew_ms: int) -> tuple[list[Item], list[Item]]:
    """Three items edited on both sides, each side stamping with its own clock:
    ``a`` last edited on this device (2 min ago vs 4), ``b`` on the other device
    (4 min ago vs 2), ``c`` at the same moment on both."""
    device_now = now_ms()
    server_now = device_now - skew_ms
    ago = {"a": (2, 4), "b": (4, 2), "c": (3, 3)}
    local = [wire("prefs", k, "device", device_now - d * MINUTE) for k, (d, _) in ago.items()]
    cloud = [wire("prefs", k, "cloud", server_now - s * MINUTE) for k, (_, s) in ago.items()]
    return local, cloud


def client_for(http: httpx.Client, store: Path, tmp_path: Path) -> MigrationClient:
    return MigrationClient(
        http_client=http,
        user_id="zoe",
        token=issue_token("zoe", Settings().jwt_secret),
        store_path=store,
        options=MigrationOptions(
            cache_dir=tmp_path / "cache",
            conflicts=ConflictPolicy(default="newest_wins", fallback="server_wins"),
        ),
        retry=RetryPolicy.none(),
    )


def values(store: Path) -> dict[str, str]:
    with LocalStore(store, create=False) as s:
        return {i["key"]: i["data"]["v"] for i in s.iter_items()}


@pytest.mark.parametrize("skew_ms", SKEWS)
def test_newest_wins_picks_the_truly_later_edit_whatever_the_device_clock_says(tmp_path, skew_ms):
    local, cloud = edits(skew_ms)
    store = tmp_path / "store.sqlite3"
    with LocalStore(store) as s:
        s.put_many(local)
    with skewed_server(tmp_path, skew_ms) as http:
        seed_cloud_items(http.app.state.storage, "zoe", cloud, device_id="tablet")  # type: ignore[attr-defined]
        with client_for(http, store, tmp_path) as client:
            plan = client.plan()
            result = client.migrate()
        held = {
            key[1]: item.wire()["data"]["v"]
            for key, item in http.app.state.storage.cloud_items(  # type: ignore[attr-defined]
                "zoe", [("prefs", k) for k in "abc"]
            ).items()
        }

    assert result.outcome is MigrationOutcome.COMPLETED and result.verified
    assert values(store) == held == {"a": "device", "b": "cloud", "c": "cloud"}
    assert result.resolutions_by_kind == {"newest_wins": 2, "newest_wins_fallback": 1}
    assert [(f.key, f.reason, f.resolved_by) for f in result.flagged] == [
        ("c", "too_close", "server_wins")
    ]
    assert abs(result.flagged[0].clock_offset_ms - skew_ms) < 1_000
    assert plan.resolutions_by_kind == result.resolutions_by_kind
    assert [(f.key, f.reason) for f in plan.flagged] == [("c", "too_close")]
    # Where the skew exceeds the 2 minutes between the edits, comparing the raw
    # timestamps would have crowned the wrong side.
    raw_winner = {
        l_["key"]: "device" if l_["updatedAt"] > c_["updatedAt"] else "cloud"
        for l_, c_ in zip(local[:2], cloud[:2], strict=True)
    }
    assert (raw_winner != {"a": "device", "b": "cloud"}) == (abs(skew_ms) > 2 * MINUTE)


def test_the_measured_offset_is_journaled_and_used_after_a_restart(tmp_path):
    skew_ms = 24 * HOUR
    local, cloud = edits(skew_ms)
    store = tmp_path / "store.sqlite3"
    with LocalStore(store) as s:
        s.put_many(local)
    with skewed_server(tmp_path, skew_ms) as http:
        seed_cloud_items(http.app.state.storage, "zoe", cloud, device_id="tablet")  # type: ignore[attr-defined]

        def offline_for_batches(request: httpx.Request) -> None:
            if request.method == "PUT":
                raise httpx.ConnectError("network is unreachable", request=request)

        http.event_hooks["request"].append(offline_for_batches)
        with client_for(http, store, tmp_path) as client, pytest.raises(OfflineError):
            client.migrate()  # measured at detect and start, then lost the network
        http.event_hooks["request"].clear()
        # A new client (as after a restart) resumes past start: it measures nothing.
        with client_for(http, store, tmp_path) as client:
            result = client.migrate()

    assert result.resumed and result.verified
    assert values(store) == {"a": "device", "b": "cloud", "c": "cloud"}


def test_a_device_item_stamped_beyond_the_future_tolerance_is_flagged(tmp_path):
    store = tmp_path / "store.sqlite3"
    device_now = now_ms()
    with LocalStore(store) as s:
        # The device clock was a day fast when this was written, and has been fixed since.
        s.put("prefs", "x", {"v": "device"}, updated_at=device_now + 24 * HOUR)
    with skewed_server(tmp_path, 0) as http:
        seed_cloud_items(
            http.app.state.storage,  # type: ignore[attr-defined]
            "zoe",
            [wire("prefs", "x", "cloud", device_now - MINUTE)],
        )
        with client_for(http, store, tmp_path) as client:
            result = client.migrate()

    assert [(f.key, f.reason) for f in result.flagged] == [("x", "local_in_future")]
    assert values(store) == {"x": "cloud"}
