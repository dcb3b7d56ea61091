"""The SDK's light wire models cannot drift from the pydantic contract: the checked-in file is
what the generator writes from ``sdk.contract`` now, and for every model the light validator
accepts and rejects exactly the payloads pydantic does, with equal values and equal
``wire()`` dumps (hypothesis: valid payloads, then each mutated at one random place)."""

from __future__ import annotations

import copy
import dataclasses
import enum
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sdk import contract
from sdk._wire import canonical, generate, validate
from sdk._wire import models as light

ROOT = Path(__file__).resolve().parent.parent
MODELS = [n for n in light.__all__ if dataclasses.is_dataclass(getattr(light, n))]


def test_the_checked_in_light_models_are_what_the_generator_writes_from_the_contract():
    assert generate.render_module() == (ROOT / "sdk" / "_wire" / "models.py").read_text(), (
        "sdk/_wire/models.py is out of date: run python -m sdk._wire.generate"
    )
    check = [sys.executable, "-m", "sdk._wire.generate", "--check"]
    assert subprocess.run(check, cwd=ROOT, capture_output=True, timeout=60).returncode == 0


def test_every_contract_model_has_its_light_form_but_the_ones_skipped_with_a_reason():
    pydantic_models = {
        name
        for name, obj in vars(contract).items()
        if isinstance(obj, type)
        and issubclass(obj, contract.WireModel)
        and obj is not contract.WireModel
    }
    assert pydantic_models - set(MODELS) == set(generate.SKIPPED)
    for name in MODELS:
        pyd, lite = getattr(contract, name), getattr(light, name)
        assert [f.name for f in dataclasses.fields(lite)] == list(pyd.model_fields), name


def test_the_contract_re_exports_the_pure_part_as_the_same_objects():
    for name in canonical.__all__:
        assert getattr(contract, name) is getattr(canonical, name), name
        assert name in contract.__all__


@pytest.mark.parametrize(
    ("metadata", "needle"),
    [
        pytest.param([annotated_types.Gt(0)], "gt", id="gt"),
        pytest.param([annotated_types.MaxLen(3)], "max_length", id="max-length"),
        pytest.param([annotated_types.MultipleOf(2)], "multiple_of", id="multiple-of"),
    ],
)
def test_the_generator_refuses_a_constraint_the_validator_does_not_enforce(metadata, needle):
    with pytest.raises(SystemExit, match=needle):
        generate._annotated(int, metadata, "Model.field")


# --------------------------------------------------------------------------- strategies

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
# What pydantic's lax mode turns into a number or a bool, and what it almost does.
TRICKY = st.one_of(
    st.sampled_from(
        [
            *("", " ", "0", "1", "-0", "+3", "007", "1_000", "1__0", "_1", "1_", "3.", "3.0"),
            *("3.00", ".0", "3.5", "1e3", "1E-2", "nan", "-inf", "Infinity", "inF", "true"),
            *("False", "yes", "off", "t", "N", "on ", " 1 ", "\u00a01", "\x1c1", "1\u3000"),
            *("0x10", "\u0661", "1_0.0", "9" * 25, "9" * 25 + ".0", "- 3", "++3", "\uff11"),
            *("server", "local", "created"),
        ]
    ),
    st.from_regex(r"\A\s?[+-]?[0-9_]{1,4}(\.[0-9_]{0,3})?([eE][+-]?[0-9]{1,3})?\s?\Z"),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0.0, 1.0, -0.0, 0.5, 2.0**63, 2.0**63 + 2048, -(2.0**63), 1e20, 1e308]),
    st.floats(),
    st.booleans(),
    st.none(),
    st.sampled_from([10**400, -(10**400), 2**63 - 1, 2**63, -1]),
)


def valid(tp: Any) -> st.SearchStrategy[Any]:
    """JSON that the light type ``tp`` (and so, if they agree, pydantic) should accept."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        base, *marks = args
        patterns = [m.regex for m in marks if isinstance(m, validate.Pattern)]
        if patterns:
            return st.from_regex(patterns[0], fullmatch=True)
        low = next((m.bound for m in marks if isinstance(m, validate.Ge)), None)
        high = next((m.bound for m in marks if isinstance(m, validate.Le)), None)
        ints = st.integers(min_value=low, max_value=high)
        return ints | st.none() if type(None) in typing.get_args(base) else ints
    if origin in (typing.Union, types.UnionType):
        return st.one_of([valid(a) for a in args])
    if tp is type(None):
        return st.none()
    if tp is int:
        return st.integers() | st.integers().map(str) | st.integers(-(2**53), 2**53).map(float)
    if tp is float:
        return st.floats() | st.integers() | st.floats(allow_nan=False).map(repr)
    if tp is bool:
        return st.booleans() | st.sampled_from([0, 1, "yes", "off", "True"])
    if tp is str:
        return st.text(max_size=12)
    if tp is Any:
        return JSON
    if origin is typing.Literal:
        return st.sampled_from(args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from([m.value for m in tp])
    if origin is list:
        return st.lists(valid(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(valid(args[0]), valid(args[1]), max_size=3)
    if dataclasses.is_dataclass(tp):
        return record(tp)
    hints = typing.get_type_hints(tp, include_extras=True)  # a TypedDict
    return st.fixed_dictionaries({name: valid(t) for name, t in hints.items()})


def record(model: Any) -> st.SearchStrategy[dict[str, Any]]:
    hints = typing.get_type_hints(model, include_extras=True)
    required, optional = {}, {}
    for f in dataclasses.fields(model):
        keys = st.sampled_from([validate.camel(f.name), validate.camel(f.name), f.name])
        pair = st.tuples(keys, valid(hints[f.name]))
        has_default = f.default is not dataclasses.MISSING
        (optional if has_default or f.default_factory is not dataclasses.MISSING else required)[
            f.name
        ] = pair
    return st.fixed_dictionaries(required, optional=optional).map(
        lambda pairs: dict(pairs.values())
    )


def paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [here]
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths(v, (*here, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths(v, (*here, i))
    return found


@st.composite
def mutated(draw: st.DrawFn, payload: Any) -> Any:
    """``payload`` changed at one random place: a value replaced, a key dropped or added, a
    key in its snake_case name next to its alias, a newline after a string."""
    payload = copy.deepcopy(payload)
    path = draw(st.sampled_from(paths(payload)))
    if not path:
        return draw(TRICKY | JSON)
    parent = payload
    for step in path[:-1]:
        parent = parent[step]
    node = parent[path[-1]]
    kind = draw(st.sampled_from(["replace", "replace", "drop", "extra", "snake", "newline"]))
    if kind == "replace":
        parent[path[-1]] = draw(TRICKY | JSON)
    elif kind == "drop":
        del parent[path[-1]]
    elif kind == "extra" and isinstance(node, dict):
        node[draw(st.sampled_from(["surprise", "session_id", "item_count", "seq"]))] = draw(JSON)
    elif kind == "snake" and isinstance(parent, dict) and isinstance(path[-1], str):
        snake = "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in path[-1])
        parent[snake] = draw(st.sampled_from([node, draw(TRICKY)]))
    elif kind == "newline" and isinstance(node, str):
        parent[path[-1]] = node + "\n"
    return payload


# --------------------------------------------------------------------------- the proof


def by_pydantic(name: str, payload: Any) -> tuple[str, Any]:
    model = getattr(contract, name)
    try:
        instance = model.model_validate(payload)
    except ValidationError as exc:
        return "rejected", sorted(map(repr, (e["loc"] for e in exc.errors())))
    return "accepted", (repr(instance.model_dump()), repr(instance.wire()))


def by_light(name: str, payload: Any) -> tuple[str, Any]:
    model = getattr(light, name)
    try:
        instance = validate.parse(model, payload)
    except validate.WireError as exc:
        return "rejected", sorted(map(repr, (e["loc"] for e in exc.errors())))
    return "accepted", (repr(dataclasses.asdict(instance)), repr(instance.wire()))


@pytest.mark.parametrize("name", MODELS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_light_validator_decides_every_payload_as_pydantic_does(name, data):
    payload = data.draw(record(getattr(light, name)), label="valid")
    assert by_light(name, payload) == by_pydantic(name, payload)
    for _ in range(3):
        broken = data.draw(mutated(payload), label="mutated")
        assert by_light(name, broken) == by_pydantic(name, broken)
