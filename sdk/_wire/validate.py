"""Read JSON into the light wire models (:mod:`sdk._wire.models`) and write them back, as
pydantic reads and writes :mod:`sdk.contract`'s models, without pydantic.

It enforces what pydantic enforces for these models, on what ``json.loads`` can produce:
required fields, unknown fields refused, camelCase aliases (snake_case names accepted too),
defaults, enums and literals, ``pattern``/``ge``/``le`` constraints, and pydantic's lax
conversions (``"3"`` or ``3.0`` for an int, ``1`` or ``"yes"`` for a bool, ...).
tests/test_wire.py proves it accepts and rejects exactly what pydantic does, with equal
values::

    >>> from sdk._wire.models import Limits
    >>> parse(Limits, {"maxBatchItems": "100"}).max_batch_items
    100
    >>> try:
    ...     parse(Limits, {"surprise": 1})
    ... except WireError as exc:
    ...     print(exc.errors())
    [{'loc': ('surprise',), 'msg': 'Extra inputs are not permitted'}]
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from .lax import SCALARS, Problem

__all__ = ["Ge", "Le", "Pattern", "WireError", "WireModel", "camel", "dump", "parse"]

_M = TypeVar("_M", bound="WireModel")
_Loc = tuple[str | int, ...]
#: What a failed check returns (None is a valid value).
_BAD: Any = object()


class WireModel:
    """Base of the light wire models: ``wire()`` gives the JSON-ready camelCase dict."""

    __slots__ = ()

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict with camelCase names, as pydantic's ``wire()`` gives it.

        >>> from sdk._wire.models import Limits
        >>> Limits().wire()["maxBatchItems"]
        5000
        """
        return dump(self)  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class Pattern:
    """The value must match ``regex`` (pydantic's ``pattern``)."""

    regex: str


@dataclasses.dataclass(frozen=True)
class Ge:
    """The value must be ``>= bound``."""

    bound: int


@dataclasses.dataclass(frozen=True)
class Le:
    """The value must be ``<= bound``."""

    bound: int


@dataclasses.dataclass(frozen=True)
class MinLen:
    """A list must hold at least ``bound`` items."""

    bound: int


@dataclasses.dataclass(frozen=True)
class MaxLen:
    """A list must hold at most ``bound`` items."""

    bound: int


def _items(bound: int) -> str:
    return f"{bound} item" if bound == 1 else f"{bound} items"


class WireError(ValueError):
    """Input that breaks the wire contract; ``errors()`` lists where and why, as pydantic's
    ``ValidationError`` does (``loc`` and ``msg``)."""

    def __init__(self, title: str, errors: list[tuple[_Loc, str]]) -> None:
        self.title = title
        self._errors = errors
        first = "; ".join(f"{'.'.join(map(str, loc)) or '<root>'}: {m}" for loc, m in errors)
        super().__init__(f"{len(errors)} validation error for {title}: {first}")

    def errors(self) -> list[dict[str, Any]]:
        return [{"loc": loc, "msg": msg} for loc, msg in self._errors]


def camel(name: str) -> str:
    """pydantic's ``to_camel`` for the contract's snake_case names.

    >>> camel("max_batch_items")
    'maxBatchItems'
    """
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def parse(model: type[_M], data: object) -> _M:
    """``model.model_validate(data)``, for the JSON ``data``; raises :class:`WireError`.

    >>> from sdk._wire.models import ResolveConflictsResponse
    >>> parse(ResolveConflictsResponse, {"resolvedCount": 1, "remainingConflicts": 0})
    ResolveConflictsResponse(resolved_count=1, remaining_conflicts=0)
    """
    errors: list[tuple[_Loc, str]] = []
    value = _check(model, data, (), errors, strict=False)
    if errors:
        raise WireError(model.__name__, errors)
    return value  # type: ignore[no-any-return]


def dump(value: Any) -> Any:
    """``model_dump(mode="json", by_alias=True)`` of a light model (or anything inside one).

    >>> from sdk._wire.models import MigrationConfig
    >>> dump(MigrationConfig())
    {'conflictStrategy': 'server_wins', 'compression': 'identity'}
    """
    if isinstance(value, WireModel):
        # A float field keeps inf and nan; inside an item's data (Any), pydantic writes null.
        return {
            alias: v if isinstance(v, float) else dump(v)
            for name, alias, *_ in _fields(type(value))
            for v in (getattr(value, name),)
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- the checks

# (name, alias, type, required, default factory)
_Field = tuple[str, str, Any, bool, Callable[[], Any] | None]
_FIELDS: dict[type, list[_Field]] = {}
_HINTS: dict[Any, dict[str, Any]] = {}


def _fields(model: type) -> list[_Field]:
    found = _FIELDS.get(model)
    if found is None:
        hints = typing.get_type_hints(model, include_extras=True)
        found = []
        for f in dataclasses.fields(model):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            factory: Callable[[], Any] | None
            if f.default_factory is not dataclasses.MISSING:
                factory = f.default_factory
            else:
                factory = None if required else (lambda d=f.default: d)
            found.append((f.name, camel(f.name), hints[f.name], required, factory))
        _FIELDS[model] = found
    return found


def _plan(tp: Any) -> tuple[str, Any]:
    """What checking a value of type ``tp`` takes, worked out once per type."""
    plan = _PLANS.get(tp)
    if plan is None:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            plan = ("annotated", (args[0], list(args[1:])))
        elif origin in (typing.Union, types.UnionType):
            (inner,) = [a for a in args if a is not type(None)]  # only `X | None` here
            plan = ("optional", inner)
        elif tp is Any:
            plan = ("any", None)
        elif tp in SCALARS:
            plan = ("scalar", SCALARS[tp])
        elif origin is typing.Literal:
            plan = ("choice", (frozenset(args), args, None))
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            values = tuple(m.value for m in tp)
            plan = ("choice", (frozenset(values), values, tp))
        elif origin in (list, dict):
            plan = (origin.__name__, args)
        elif isinstance(tp, type) and issubclass(tp, WireModel):
            plan = ("record", tp)
        else:
            plan = ("typed_dict", tp)
        _PLANS[tp] = plan
    return plan


_PLANS: dict[Any, tuple[str, Any]] = {}


def _check(tp: Any, value: Any, loc: _Loc, errors: list[tuple[_Loc, str]], *, strict: bool) -> Any:
    """``value`` as type ``tp`` would validate it, or ``_BAD`` after adding to ``errors``."""
    kind, arg = _plan(tp)
    if kind == "scalar":
        return _fail(errors, loc, arg(value, strict))
    if kind == "choice":
        options, ordered, enum_type = arg
        # Only exact str values: the contract's enums and literals are all str.
        if isinstance(value, str) and value in options:
            return value if enum_type is None else enum_type(value)
        quoted = [repr(o) for o in ordered]
        listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        return _fail(errors, loc, Problem(f"Input should be {listed}"))
    if kind == "optional":
        return None if value is None else _check(arg, value, loc, errors, strict=strict)
    if kind == "annotated":
        base, marks = arg
        for mark in marks:  # pydantic stops a list that runs too long before its items
            if isinstance(mark, MaxLen) and isinstance(value, list) and len(value) > mark.bound:
                too_long = f"List should have at most {_items(mark.bound)} after validation"
                return _fail(errors, loc, Problem(f"{too_long}, not {len(value)}"))
        value = _check(base, value, loc, errors, strict=strict)
        return value if value is _BAD else _constrain(marks, value, loc, errors)
    if kind == "any":
        return value
    if kind == "list":
        if not isinstance(value, list):
            return _fail(errors, loc, Problem("Input should be a valid list"))
        (item,) = arg
        if _all_plain(item, value):
            return list(value)
        items = [_check(item, v, (*loc, i), errors, strict=strict) for i, v in enumerate(value)]
        return _BAD if _BAD in items else items
    if kind == "dict":
        return _mapping(arg, value, loc, errors, strict=strict)
    if kind == "record":
        return _record(arg, value, loc, errors)
    return _typed_dict(arg, value, loc, errors)


def _all_plain(item: Any, values: list[Any]) -> bool:
    """Whether every value is already what ``item`` makes of it (a long list's fast path:
    a plan page's outcomes, a session's received batches)."""
    kind, arg = _plan(item)
    if kind == "choice" and arg[2] is None:
        options = arg[0]
        return all(isinstance(v, str) and v in options for v in values)
    if kind == "scalar" and arg is SCALARS[int]:
        return all(type(v) is int for v in values)
    return False


def _fail(errors: list[tuple[_Loc, str]], loc: _Loc, result: Any) -> Any:
    if isinstance(result, Problem):
        errors.append((loc, result.msg))
        return _BAD
    return result


def _record(model: type[WireModel], value: Any, loc: _Loc, errors: list[tuple[_Loc, str]]) -> Any:
    if not isinstance(value, dict):
        msg = f"Input should be a valid dictionary or instance of {model.__name__}"
        return _fail(errors, loc, Problem(msg))
    known: set[str] = set()
    kwargs: dict[str, Any] = {}
    for name, alias, tp, required, factory in _fields(model):
        # populate_by_name: the alias wins; the name serves when the alias is absent.
        key = alias if alias in value else name
        known.add(key)
        if key in value:
            kwargs[name] = _check(tp, value[key], (*loc, key), errors, strict=False)
        elif required:
            errors.append(((*loc, alias), "Field required"))
        else:
            assert factory is not None
            kwargs[name] = factory()
    for key in value:
        if key not in known:
            errors.append(((*loc, key), "Extra inputs are not permitted"))
    if _BAD in kwargs.values() or len(kwargs) < len(_fields(model)):
        return _BAD
    return model(**kwargs)


def _typed_dict(td: Any, value: Any, loc: _Loc, errors: list[tuple[_Loc, str]]) -> Any:
    # Without a config of its own, a TypedDict takes the WireModel's that holds it.
    extra, strict = getattr(td, "__wire_config__", ("forbid", False))
    if not isinstance(value, dict):
        return _fail(errors, loc, Problem("Input should be a valid dictionary"))
    hints = _HINTS.get(td)
    if hints is None:
        hints = _HINTS[td] = typing.get_type_hints(td, include_extras=True)
    out: dict[str, Any] = {}
    for name, tp in hints.items():
        if name in value:
            out[name] = _check(tp, value[name], (*loc, name), errors, strict=strict)
        else:
            errors.append(((*loc, name), "Field required"))
    if extra == "forbid":
        for key in value:
            if key not in hints:
                errors.append(((*loc, key), "Extra inputs are not permitted"))
    return _BAD if _BAD in out.values() or len(out) < len(hints) else out


def _mapping(
    args: tuple[Any, ...], value: Any, loc: _Loc, errors: list[tuple[_Loc, str]], *, strict: bool
) -> Any:
    if not isinstance(value, dict):
        return _fail(errors, loc, Problem("Input should be a valid dictionary"))
    key_type, value_type = args
    out: dict[Any, Any] = {}
    bad = False
    for k, v in value.items():
        key = _check(key_type, k, (*loc, k, "[key]"), errors, strict=strict)
        item = _check(value_type, v, (*loc, k), errors, strict=strict)
        bad = bad or key is _BAD or item is _BAD
        out[key] = item
    return _BAD if bad else out


def _constrain(marks: list[Any], value: Any, loc: _Loc, errors: list[tuple[_Loc, str]]) -> Any:
    if value is None:  # an optional field's constraints bind its value, not its absence
        return value
    for mark in marks:
        if isinstance(mark, Pattern):
            if not _regex(mark.regex).search(value):
                return _fail(errors, loc, Problem(f"String should match pattern '{mark.regex}'"))
        elif isinstance(mark, Ge) and not value >= mark.bound:
            return _fail(
                errors, loc, Problem(f"Input should be greater than or equal to {mark.bound}")
            )
        elif isinstance(mark, MinLen) and len(value) < mark.bound:
            too_short = f"List should have at least {_items(mark.bound)} after validation"
            return _fail(errors, loc, Problem(f"{too_short}, not {len(value)}"))
        elif isinstance(mark, Le) and not value <= mark.bound:
            return _fail(
                errors, loc, Problem(f"Input should be less than or equal to {mark.bound}")
            )
    return value


_REGEXES: dict[str, re.Pattern[str]] = {}


def _regex(pattern: str) -> re.Pattern[str]:
    compiled = _REGEXES.get(pattern)
    if compiled is None:
        # pydantic matches with Rust's regex, whose `$` is the end of the text; Python's
        # also matches before a final newline. `\Z` is Rust's `$`.
        rust = (
            pattern[:-1] + r"\Z"
            if pattern.endswith("$") and not pattern.endswith("\\$")
            else pattern
        )
        compiled = _REGEXES[pattern] = re.compile(rust)
    return compiled
