"""The server's documentation keeps up with its code: examples run, public names have one."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import backend_stub
import backend_stub.storage


def _modules() -> list[str]:
    names = ["backend_stub", "backend_stub.storage"]
    names += [f"backend_stub.{m.name}" for m in pkgutil.iter_modules(backend_stub.__path__)]
    names += [
        f"backend_stub.storage.{m.name}"
        for m in pkgutil.iter_modules(backend_stub.storage.__path__)
    ]
    return sorted(set(names))


MODULES = [pytest.param(name, id=name) for name in _modules()]


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_in_the_docstrings_run(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATION_JWT_SECRET", raising=False)
    module = importlib.import_module(name)

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)

    assert result.failed == 0


@pytest.mark.parametrize("name", MODULES)
def test_every_public_function_and_class_has_an_example(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    missing = [
        public
        for public in getattr(module, "__all__", [])
        if (inspect.isfunction(obj := getattr(module, public)) or inspect.isclass(obj))
        and ">>>" not in (obj.__doc__ or "")
        and "    serve(" not in (obj.__doc__ or "")  # blocks forever: shown, not run
    ]

    assert missing == []


def test_the_package_exports_are_sorted_and_importable() -> None:
    assert backend_stub.__all__ == sorted(backend_stub.__all__)
    for name in backend_stub.__all__:
        assert getattr(backend_stub, name) is not None
