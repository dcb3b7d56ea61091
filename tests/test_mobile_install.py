"""The SDK installs on Android and iOS (issue 12): its runtime closure resolves from the
package registry with wheels only, for both platforms' tags and the Python versions with
official Android and iOS support, and the SDK does its whole job without pydantic (whose
core has no Android or iOS wheel). The resolution is the one test of the suite that reaches
the registry; everything else here runs on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sdk_fixtures import learning_items, make_store

ROOT = Path(__file__).resolve().parent.parent

PLATFORMS = {
    # Android's tag names the API level; a wheel for an older level installs on a newer one.
    "android_24_arm64_v8a": re.compile(r"android_\d+_arm64_v8a"),
    "ios_13_0_arm64_iphoneos": re.compile(r"ios_\d+_\d+_arm64_iphoneos"),
}
PYTHONS = ("3.13", "3.14")
# name-version(-build)?-python-abi-platform.whl
WHEEL = re.compile(r"^(?P<name>[^-]+)-[^-]+(?:-\d[^-]*)?-[^-]+-[^-]+-(?P<platform>[^-]+)\.whl$")


@pytest.fixture(scope="module")
def sdk_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout built as a wheel, so its declared dependencies are what resolves."""
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--quiet", "--wheel-dir", str(out), str(ROOT)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("offline_migrate-*.whl")
    return wheel


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_the_sdk_resolves_for_the_phone_from_the_registry_with_wheels_only(
    sdk_wheel: Path, tmp_path: Path, platform: str, python: str
) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", str(sdk_wheel)),
            *("--only-binary=:all:", "--platform", platform, "--python-version", python),
            *("--dest", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=600,  # the registry, over the network
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in tmp_path.iterdir())
    wheels = {name: WHEEL.match(name) for name in files}
    assert None not in wheels.values(), f"not a wheel: {files}"
    fitting = PLATFORMS[platform]
    foreign = [
        name
        for name, match in wheels.items()
        if match is not None
        and not all(tag == "any" or fitting.fullmatch(tag) for tag in match["platform"].split("."))
    ]
    assert foreign == [], f"wheels for another platform: {foreign}"
    names = {m["name"].lower() for m in wheels.values() if m is not None}
    assert {"offline_migrate", "httpx", "platformdirs", "sqlite_utils"} <= names
    assert not names & {"pydantic", "pydantic_core"}


# Run before anything else in the child: pydantic (and its core) cannot be imported.
NO_PYDANTIC = """\
import sys
sys.modules["pydantic"] = None
sys.modules["pydantic_core"] = None
"""


def without_pydantic(tmp_path: Path, code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(NO_PYDANTIC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def test_the_shim_makes_pydantic_unimportable_and_sdk_contract_says_what_to_install(
    tmp_path: Path,
) -> None:
    done = without_pydantic(tmp_path, "import sdk.contract")
    assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr
    assert "install offline-migrate[server] to use it" in done.stderr


def test_a_migration_with_conflicts_a_sync_and_a_verify_run_without_pydantic(
    live_server, tmp_path: Path
) -> None:
    user = "no-pydantic"
    items = learning_items(200)
    # The cloud holds other versions of a few keys: conflicts to list, decide and post.
    live_server.seed(user, [{**item, "data": {"other": "device"}} for item in items[:7]])
    store = make_store(tmp_path / "store.sqlite3", items)
    cli = ["--server", live_server.url, "--user", user, "--token", live_server.token(user)]
    cli += ["--store", str(store)]
    run_cli = "import sys, sdk.cli; sys.exit(sdk.cli.main(sys.argv[1:]))"

    migrated = without_pydantic(tmp_path, run_cli, "migrate", *cli)
    assert migrated.returncode == 0, migrated.stderr
    assert f"migrated {len(items)} items, verified: yes" in migrated.stdout
    assert "in conflict 7" in migrated.stdout and "server_wins 7" in migrated.stdout

    wrote = without_pydantic(
        tmp_path,
        f"""
        from sdk import LocalStore
        with LocalStore({str(store)!r}) as app:
            app.put("lesson_progress", "after", {{"score": 9}})
        """,
    )
    assert wrote.returncode == 0, wrote.stderr
    synced = without_pydantic(tmp_path, run_cli, "sync", *cli)
    assert synced.returncode == 0, synced.stderr
    assert "1 change(s) sent" in synced.stdout and "in step with the cloud: yes" in synced.stdout
    verified = without_pydantic(tmp_path, run_cli, "verify", "--full", *cli)
    assert verified.returncode == 0, verified.stderr
    assert "pydantic" not in migrated.stderr + synced.stderr + verified.stderr
