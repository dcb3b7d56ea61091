"""The documentation cannot fall behind the code: docstring examples and the README run."""

from __future__ import annotations

import doctest
import importlib
import os
import re
from pathlib import Path

import pytest

import sdk

ROOT = Path(__file__).resolve().parent.parent
# Every module below sdk, in the capability folders too (a folder's __init__ is the folder).
SDK_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "sdk").rglob("*.py")
    if p.stem != "__main__" and p != ROOT / "sdk" / "__init__.py"
)


@pytest.mark.parametrize("name", [pytest.param(m, id=m) for m in ["sdk", *SDK_MODULES]])
def test_the_docstring_examples_of_every_sdk_module_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_every_public_name_is_exported_sorted_and_documented_with_an_example():
    assert sdk.__all__ == sorted(sdk.__all__)
    public = {name for name in dir(sdk) if not name.startswith("_")}
    modules = {"contract"}  # submodules show up as attributes once imported
    assert public - modules - {m.split(".")[1] for m in SDK_MODULES} == set(sdk.__all__)
    undocumented = [
        name
        for name in sdk.__all__
        if callable(getattr(sdk, name))
        and ">>>" not in (getattr(sdk, name).__doc__ or "")
        and "::" not in (getattr(sdk, name).__doc__ or "")
    ]
    assert undocumented == []


def readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_code_samples_run_against_a_real_server(live_server, monkeypatch, capsys):
    blocks = readme_python_blocks()
    assert blocks, "the README shows no Python sample"
    monkeypatch.setenv("MIGRATION_SERVER", live_server.url)
    monkeypatch.setenv("MIGRATION_USER", "readme-reader")
    monkeypatch.setenv("MIGRATION_TOKEN", live_server.token("readme-reader"))
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "completed 3 items, verified: True" in out
    assert os.environ["MIGRATION_USER"] == "readme-reader"
