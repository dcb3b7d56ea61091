"""`import sdk` loads nothing heavy: every public name comes from its module on first use,
and the startup hook's background thread, not the app's main thread, loads the rest."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import sdk

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("httpx", "sqlite_utils", "platformdirs", "sdk._wire.models", "sdk._client")
# The SDK reads the wire contract in its light form: pydantic is the server's, never loaded.
NEVER = ("pydantic", "sdk.contract")


def test_every_name_in_all_resolves_to_the_object_its_module_defines():
    assert list(sdk._EXPORTS) == sorted(sdk._EXPORTS)  # one line per name, kept sorted
    assert sdk.__all__ == sorted(sdk._EXPORTS)
    for name in sdk.__all__:
        module = importlib.import_module(sdk._EXPORTS[name], "sdk")
        assert getattr(sdk, name) is getattr(module, name), name
        assert name in module.__all__, f"{name} is not in {module.__name__}.__all__"
    assert set(sdk.__all__) <= set(dir(sdk))


def test_the_typed_imports_name_exactly_what_the_lazy_map_exports():
    tree = ast.parse((ROOT / "sdk" / "__init__.py").read_text())
    typed = {
        alias.asname or alias.name: f".{node.module}"
        for block in tree.body
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == sdk._EXPORTS


def test_an_unknown_name_is_an_attribute_error_and_the_contract_submodule_loads_on_access():
    try:
        sdk.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("sdk.NoSuchThing resolved")
    assert sdk.contract.Item.__name__ == "Item"


# Records which thread first imports each heavy module; the app's main thread must not.
WHO_IMPORTS = """
import sys, threading
HEAVY = {heavy!r}
first = {{}}

class Spy:
    def find_spec(self, name, path=None, target=None):
        if name in HEAVY and name not in first:
            first[name] = threading.current_thread().name
        return None

sys.meta_path.insert(0, Spy())
from sdk import RetryPolicy, auto_migrate
after_import = sorted(first)
tried = threading.Event()  # the server is unreachable: the first retry wait means all loaded
handle = auto_migrate(server="http://127.0.0.1:9", user_id="u1", token="t",
                      store_path={store!r}, retry=RetryPolicy(attempts=1),
                      on_state=lambda s: s.state.value == "retrying" and tried.set())
assert tried.wait(60)
handle.stop(30)
print(after_import)
print(sorted(set(first.values())))
print(sorted(first))
"""


def test_the_startup_hook_loads_the_heavy_machinery_on_its_own_thread_only(tmp_path):
    from sdk_fixtures import learning_items, make_store

    store = make_store(tmp_path / "store.sqlite3", learning_items(5))
    done = subprocess.run(
        [sys.executable, "-c", WHO_IMPORTS.format(heavy=HEAVY + NEVER, store=str(store))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    after_import, threads, loaded = done.stdout.splitlines()
    assert after_import == "[]"  # `from sdk import auto_migrate` loaded none of them
    assert threads == "['sdk-auto-migrate']"
    # The thread did load them all (the spy works), and never pydantic nor sdk.contract.
    assert loaded == str(sorted(HEAVY))
