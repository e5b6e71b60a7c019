"""The search space of ``mtbert tune``: spec keys by dotted path, each with what it may take.

A space is TOML, the content of a spec's ``[tune]`` table or of a file given
with ``--space``::

    [params."train.lr"]
    type = "float"              # float | int | choice
    low = 1e-5
    high = 2e-4
    log = true                  # sample on a log scale (float, int)

    [params."tasks.sst.weight"]
    type = "float"
    low = 0.5
    high = 2.0
    step = 0.25                 # optional: a grid of values (float, int)

    [params.gradient]
    type = "choice"
    values = ["sum", "pcgrad", { name = "cagrad", c = 0.4 }]

    [params."gradient.c"]       # only when the gradient drawn is cagrad
    type = "float"
    low = 0.1
    high = 0.9
    when = { gradient = "cagrad" }

A choice's values are anything a spec key takes (numbers, strings, whole
components as tables); Optuna sees each by its label (a component by its
name, or its options when two share one). ``when`` names earlier parameters
and the label each must have drawn. Parameters are set in the order given,
so a conditional key goes inside the component an earlier one drew.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import attrs

from mtbert.base.errors import SpecError
from mtbert.config.spec import apply_override

TYPES = ("float", "int", "choice")


def label(value: Any, others: list):
    """What Optuna records for a choice: a number, string or boolean as it is, a component by its name
    (with its options when another choice has the same name), anything else as JSON text."""
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        name = value["name"]
        same = [o for o in others if (o.get("name") if isinstance(o, dict) else o) == name]
        return name if len(same) == 1 else json.dumps(value, sort_keys=True, separators=(",", ":"))
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@attrs.frozen
class Param:
    path: str  # the spec key, dotted ("tasks.sst.weight")
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    values: tuple = ()  # a choice's values, as the spec takes them
    when: tuple[tuple[str, Any], ...] = ()  # (earlier parameter, the label it must have drawn)

    @property
    def labels(self) -> list:
        return [label(v, list(self.values)) for v in self.values]

    def applies(self, drawn: dict[str, Any]) -> bool:
        """Whether this parameter is drawn, given the labels the earlier ones drew."""
        return all(drawn.get(path) == wanted for path, wanted in self.when)

    def suggest(self, trial) -> tuple[Any, Any]:
        """Draw from an Optuna trial: (the value for the spec, its label)."""
        if self.type == "choice":
            chosen = trial.suggest_categorical(self.path, self.labels)
            return copy.deepcopy(self.values[self.labels.index(chosen)]), chosen
        if self.type == "int":
            value = trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1),
                                      log=self.log)
        else:
            value = trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.log)
        return value, value

    def corners(self) -> list:
        """The values validation tries: the ends of a range, every choice."""
        if self.type == "choice":
            return list(self.values)
        ends = [self.low, self.high]
        return [int(v) for v in ends] if self.type == "int" else ends

    def grid(self) -> list | None:
        """Every value, for the grid sampler; None when the range is continuous."""
        if self.type == "choice":
            return self.labels
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [self.low + i * self.step for i in range(count)]


@attrs.frozen
class Space:
    params: tuple[Param, ...]

    def sample(self, trial) -> tuple[dict[str, Any], dict[str, Any]]:
        """Draw every parameter that applies: (path -> value, path -> label)."""
        values, drawn = {}, {}
        for param in self.params:
            if param.applies(drawn):
                values[param.path], drawn[param.path] = param.suggest(trial)
        return values, drawn

    def apply(self, data: dict, values: dict[str, Any]) -> dict:
        """A copy of the spec's data with the drawn values set, in the space's order."""
        data = copy.deepcopy(data)
        for param in self.params:
            if param.path in values:
                apply_override(data, param.path.split("."), copy.deepcopy(values[param.path]))
        return data

    def grid(self) -> dict[str, list] | None:
        grids = {p.path: p.grid() for p in self.params}
        return None if any(g is None for g in grids.values()) else grids


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_param(path: str, raw: Any, earlier: dict[str, Param], problems: list, where: str) -> Param | None:
    """One ``[params."<path>"]`` table, checked; problems go to ``problems`` as (place, message)."""
    place = f'{where}."{path}"'
    before = len(problems)
    parts = path.split(".")
    if not path or not all(parts):
        problems.append((place, "a spec key is dotted names like train.lr or tasks.sst.weight"))
    if not isinstance(raw, dict):
        problems.append((place, f'expected a table (type = "float" | "int" | "choice" ...), got {raw!r}'))
        return None
    known = {"type", "low", "high", "log", "step", "values", "when"}
    for key in sorted(set(raw) - known):
        problems.append((f"{place}.{key}", f"unknown key; a parameter takes {', '.join(sorted(known))}"))
    kind = raw.get("type")
    if kind not in TYPES:
        problems.append((f"{place}.type", f"expected one of {', '.join(TYPES)}, got {kind!r}"))
        return None
    when = raw.get("when", {})
    if not isinstance(when, dict):
        problems.append((f"{place}.when", "expected a table: { <earlier parameter> = <the label it drew> }"))
        when = {}
    for other, wanted in when.items():
        if other not in earlier:
            problems.append((f"{place}.when", f"{other!r} is not a parameter given before this one"))
        elif earlier[other].type != "choice":
            problems.append((f"{place}.when", f"{other} is a {earlier[other].type}; only a choice can condition "
                                              "another parameter"))
        elif wanted not in earlier[other].labels:
            problems.append((f"{place}.when", f"{other} draws one of {earlier[other].labels}, never {wanted!r}"))
    if kind == "choice":
        for key in ("low", "high", "log", "step"):
            if key in raw:
                problems.append((f"{place}.{key}", "a choice takes values = [...], not a range"))
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            problems.append((f"{place}.values", "expected a non-empty list of what the key may take"))
            return None
        labels = [label(v, values) for v in values]
        if len({json.dumps(x) for x in labels}) != len(labels):
            problems.append((f"{place}.values", "two values are the same"))
        param = Param(path, kind, values=tuple(values), when=tuple(when.items()))
    else:
        if "values" in raw:
            problems.append((f"{place}.values", f'a {kind} takes low and high; for a list use type = "choice"'))
        low, high, step, log = raw.get("low"), raw.get("high"), raw.get("step"), raw.get("log", False)
        for key, value in (("low", low), ("high", high)):
            if not _number(value) or (kind == "int" and not float(value).is_integer()):
                problems.append((f"{place}.{key}", f"expected {'an integer' if kind == 'int' else 'a number'}, "
                                                   f"got {value!r}"))
        if not isinstance(log, bool):
            problems.append((f"{place}.log", f"expected true or false, got {log!r}"))
        if step is not None and (not _number(step) or step <= 0):
            problems.append((f"{place}.step", f"expected a positive number, got {step!r}"))
        if len(problems) > before:
            return None
        if low >= high:
            problems.append((f"{place}.high", f"must be greater than low ({low}), got {high}"))
        if log and low <= 0:
            problems.append((f"{place}.low", f"a log scale needs low > 0, got {low}"))
        if log and step is not None:
            problems.append((f"{place}.step", "give log = true or a step, not both (Optuna samples one or the other)"))
        param = Param(path, kind, float(low), float(high), log, None if step is None else float(step),
                      when=tuple(when.items()))
    return param if len(problems) == before else None


def parse_space(raw: Any, where: str = "tune.params") -> Space:
    """The ``params`` table -> Space, or SpecError naming every problem at its place."""
    problems: list = []
    if not isinstance(raw, dict) or not raw:
        raise SpecError([(where, 'no parameters: give at least one [params."<spec key>"] table')])
    params: dict[str, Param] = {}
    for path, table in raw.items():
        param = parse_param(path, table, params, problems, where)
        if param is not None:
            params[path] = param
    if problems:
        raise SpecError(problems)
    return Space(tuple(params.values()))


def check_against_spec(space: Space, data: dict, structure) -> None:
    """Every parameter's every corner (the ends of a range, each choice), set in the spec with what it
    depends on, must make a valid spec: a wrong key or a value no spec takes is found before any trial
    trains. ``structure(data)`` raises SpecError for a bad spec."""
    problems = []
    for param in space.params:
        for corner in param.corners():
            values = _with_conditions(space, param, corner)
            found = _problems(structure, space.apply(data, values))
            # a value valid only beside another choice's value (cagrad with a sampler of several tasks
            # a step) is valid: the trial that draws it with an unfit partner fails with its reason
            partners = ({**_with_conditions(space, other, value), **values}
                        for other in space.params if other.type == "choice" and other.path not in values
                        for value in other.values)
            if found and not any(not _problems(structure, space.apply(data, v)) for v in partners):
                shown = label(corner, list(param.values)) if param.type == "choice" else repr(corner)
                problems += [(f'params."{param.path}" = {shown}', f"{path or 'spec'}: {message}")
                             for path, message in found]
    if problems:
        raise SpecError(_unique(problems))


def _problems(structure, data: dict) -> list:
    try:
        structure(data)
    except SpecError as exc:
        return exc.problems
    return []


def _with_conditions(space: Space, param: Param, value) -> dict:
    """``param`` at ``value``, with the earlier parameters it depends on at the values it needs."""
    values = {}
    for path, wanted in param.when:
        other = next(p for p in space.params if p.path == path)  # a choice (parse_param checked)
        values.update(_with_conditions(space, other, other.values[other.labels.index(wanted)]))
    values[param.path] = value
    return values


def _unique(problems: list) -> list:
    seen, out = set(), []
    for problem in problems:
        if problem not in seen:
            seen.add(problem)
            out.append(problem)
    return out
