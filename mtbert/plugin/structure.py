"""Turn plain TOML data into frozen attrs classes, collecting every problem.

We write this by hand rather than use cattrs because the messages are the
product here: each problem carries its dotted path (``tasks.sst.head.dropout``)
and says what was expected and what was found, all problems are reported at
once, and TOML's real types are respected (``"3"`` is not an int, ``1`` is a
valid float). The supported annotations are the ones configs use: bool, int,
float, str, Literal, Optional, list, tuple, dict[str, X], attrs classes and
component references (see :mod:`mtbert.spec`).
"""

from __future__ import annotations

import copy
import difflib
import math
import types
import typing
from typing import Any, Callable, Literal, Union

import attrs

Problems = list  # list[tuple[str, str]]: (dotted path, message)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def describe(value: Any) -> str:
    """How a value found in the spec is shown in a message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def closest(name: str, known) -> str:
    """' (did you mean "x"?)' when a known name is close, else ''."""
    match = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f' (did you mean "{match[0]}"?)' if match else ""


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(describe(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or attrs.has(tp):
        return "a table"
    return getattr(tp, "__name__", str(tp))


class Structurer:
    """Structures raw data into a type; extend it by overriding ``special``."""

    def __init__(self) -> None:
        self.problems: Problems = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def special(self, tp, value, path, field) -> tuple[bool, Any]:
        """Hook for types a subclass handles itself; returns (handled, result)."""
        return False, None

    # -- entry point -------------------------------------------------------
    def structure(self, tp, value, path: str = "", field: attrs.Attribute | None = None):
        handled, result = self.special(tp, value, path, field)
        if handled:
            return result
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any:
            return value
        if origin in (Union, types.UnionType):
            options = [a for a in args if a is not type(None)]
            if len(options) == 1:
                return self.structure(options[0], value, path, field)
            return self._union(options, value, path, field)
        if origin is Literal:
            if value in args and type(value) in {type(a) for a in args}:
                return value
            return self._fail(path, tp, value, closest(value, args) if isinstance(value, str) else "")
        if origin is list or origin is tuple:
            return self._sequence(tp, origin, args, value, path, field)
        if origin is dict:
            return self._mapping(args[1], value, path, field)
        if attrs.has(tp):
            return self.structure_attrs(tp, value, path)
        return self._scalar(tp, value, path)

    # -- scalars -----------------------------------------------------------
    def _scalar(self, tp, value, path):
        if tp is bool:
            ok = isinstance(value, bool)
        elif tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and not math.isfinite(value):
                self.problem(path, f"expected a finite number, got {describe(value)}")
                return None
            value = float(value) if ok else value
        elif tp is str:
            ok = isinstance(value, str)
        else:
            raise TypeError(f"mtbert cannot structure type {tp!r} (at {path})")
        return value if ok else self._fail(path, tp, value)

    def _fail(self, path, tp, value, hint: str = ""):
        self.problem(path, f"expected {type_name(tp)}, got {describe(value)}{hint}")
        return None

    def _union(self, options, value, path, field):
        for option in options:
            probe = copy.copy(self)  # same settings, its own problem list
            probe.problems = []
            result = probe.structure(option, value, path, field)
            if not probe.problems:
                return result
        return self._fail(path, Union[tuple(options)], value)

    def _sequence(self, tp, origin, args, value, path, field):
        if not isinstance(value, list):
            return self._fail(path, tp, value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                self.problem(path, f"expected a list of {len(args)} items, got {len(value)}")
                return None
            items = [self.structure(a, v, join(path, i), field) for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [self.structure(item_tp, v, join(path, i), field) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items

    def _mapping(self, value_tp, value, path, field):
        if not isinstance(value, dict):
            return self._fail(path, dict, value)
        return {k: self.structure(value_tp, v, join(path, k), field) for k, v in value.items()}

    # -- attrs classes -----------------------------------------------------
    def structure_attrs(self, cls, value, path: str):
        if not isinstance(value, dict):
            self.problem(path, f"expected a table, got {describe(value)}")
            return None
        start = len(self.problems)
        fields = {f.name: f for f in attrs.fields(cls) if f.init}
        hints = typing.get_type_hints(cls)
        # keys a class no longer has but older specs may hold: accepted and ignored (key -> why)
        retired = getattr(cls, "__retired_keys__", {})
        for key in value:
            if key not in fields and key not in retired:
                known = ", ".join(fields) or "none"
                self.problem(join(path, key), f"unknown key{closest(key, fields)}; known keys: {known}")
        kwargs = {}
        for name, field in fields.items():
            fpath = join(path, name)
            if name in value:
                raw = value[name]
            elif "raw_default" in field.metadata:  # a default given as spec data
                raw = field.metadata["raw_default"]
            elif field.default is not attrs.NOTHING:
                continue
            else:
                self.problem(fpath, f"required ({type_name(hints[name])}) but missing")
                continue
            before = len(self.problems)
            result = self.structure(hints[name], raw, fpath, field)
            if len(self.problems) == before and field.validator is not None:
                self._validate(field, result, fpath)
            kwargs[name] = result
        if len(self.problems) > start:
            return None  # never build a half-valid object; the caller reports the problems
        try:
            obj = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            self.problem(path, str(exc))
            return None
        check = getattr(obj, "check", None)
        if callable(check):
            for sub, message in check() or ():
                self.problem(join(path, sub) if sub else path, message)
        return obj

    def _validate(self, field: attrs.Attribute, value, path: str) -> None:
        try:
            field.validator(None, field, value)
        except (TypeError, ValueError) as exc:
            self.problem(path, str(exc))


# -- validators for config classes (attrs style: (instance, attribute, value)) --

def _validator(test: Callable[[Any], bool], message: str):
    def check(_inst, _attr, value):
        if value is not None and not test(value):
            raise ValueError(message.format(value=describe(value)))
    return check


def at_least(low):
    return _validator(lambda v: v >= low, f"must be >= {low}, got {{value}}")


def greater_than(low):
    return _validator(lambda v: v > low, f"must be > {low}, got {{value}}")


def in_range(low, high):
    return _validator(lambda v: low <= v <= high, f"must be between {low} and {high}, got {{value}}")


def probability(_inst, _attr, value):
    """A dropout-like probability in [0, 1)."""
    if value is not None and not 0.0 <= value < 1.0:
        raise ValueError(f"must be in [0, 1), got {describe(value)}")


def non_empty(_inst, _attr, value):
    if value is not None and len(value) == 0:
        raise ValueError("must not be empty")
