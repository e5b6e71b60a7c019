"""What a study is: its settings (the ``[tune]`` table, or the file ``--space`` names) and the
spec it starts from.

    trials = 20             # trials in the study, all workers together (a continued study counts
                            # what it has; an interrupted trial is retried, not counted)
    sampler = "tpe"         # tpe | random | grid | nsga2 (Optuna's samplers)
    pruner = "median"       # median | halving | none (one objective only)
    startup_trials = 3      # the median pruner prunes nothing before this many trials finished
    warmup_steps = 0        # ... nor before this training step
    objectives = ["overall"]  # "overall" and/or task names (each task's main dev metric, in [0, 1])
    study = "my-study"      # default: the spec's name
    storage = "postgresql://user@host/db"  # default: SQLite in the study's directory
    parallel = 1            # trials at once on this machine
    seed = 11               # the sampler's seed (default: the spec's)
    [params."train.lr"] ... # the search space: mtbert/tune/space.py
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import attrs

from mtbert.base.errors import SpecError
from mtbert.config.spec import apply_override, parse_override, read_toml
from mtbert.tune.space import Space, check_against_spec, parse_space

SAMPLERS = ("tpe", "random", "grid", "nsga2")
PRUNERS = ("median", "halving", "none")
KEYS = {"trials", "sampler", "pruner", "startup_trials", "warmup_steps", "objectives", "study", "storage",
        "parallel", "seed", "params"}


@attrs.frozen
class Settings:
    space: Space
    trials: int = 20
    sampler: str = "tpe"
    pruner: str = "median"
    startup_trials: int = 3
    warmup_steps: int = 0
    objectives: tuple[str, ...] = ("overall",)
    study: str | None = None
    storage: str | None = None
    parallel: int = 1
    seed: int | None = None


@attrs.frozen
class Study:
    """A study ready to run: its settings, the spec's data (before any parameter), the spec's file."""

    settings: Settings
    data: dict
    source: Path

    @property
    def name(self) -> str:
        return self.settings.study or str(self.data.get("name", "run"))


def _positive_int(raw: dict, key: str, default: int, problems: list, where: str, least: int = 1) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        problems.append((f"{where}.{key}", f"expected an integer >= {least}, got {value!r}"))
        return default
    return value


def parse_settings(raw: Any, tasks: tuple[str, ...], where: str = "tune") -> Settings:
    """The ``[tune]`` table -> Settings, or SpecError with every problem at its place."""
    if not isinstance(raw, dict):
        raise SpecError([(where, "expected a table of settings and [params...]")])
    problems: list = []
    for key in sorted(set(raw) - KEYS):
        problems.append((f"{where}.{key}", f"unknown key; [tune] takes {', '.join(sorted(KEYS))}"))
    try:
        space = parse_space(raw.get("params"), f"{where}.params")
    except SpecError as exc:
        problems += exc.problems
        space = None
    sampler, pruner = raw.get("sampler", "tpe"), raw.get("pruner")
    if sampler not in SAMPLERS:
        problems.append((f"{where}.sampler", f"expected one of {', '.join(SAMPLERS)}, got {sampler!r}"))
    objectives = raw.get("objectives", ["overall"])
    if isinstance(objectives, str):
        objectives = [o.strip() for o in objectives.split(",") if o.strip()]
    if not isinstance(objectives, list) or not objectives or not all(isinstance(o, str) for o in objectives):
        problems.append((f"{where}.objectives", f'expected a list like ["overall"] or {list(tasks)}, got '
                                                f"{objectives!r}"))
        objectives = ["overall"]
    for name in objectives:
        if name != "overall" and name not in tasks:
            problems.append((f"{where}.objectives", f"{name!r} is neither \"overall\" nor a task of the spec "
                                                    f"({', '.join(tasks)})"))
    if len(set(objectives)) != len(objectives):
        problems.append((f"{where}.objectives", "an objective is named twice"))
    if pruner is None:
        pruner = "median" if len(objectives) == 1 else "none"
    if pruner not in PRUNERS:
        problems.append((f"{where}.pruner", f"expected one of {', '.join(PRUNERS)}, got {pruner!r}"))
    elif pruner != "none" and len(objectives) > 1:
        problems.append((f"{where}.pruner", "pruning compares one score between trials; with several objectives "
                                            'use pruner = "none"'))
    for key in ("study", "storage"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key].strip()):
            problems.append((f"{where}.{key}", f"expected a non-empty string, got {raw[key]!r}"))
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append((f"{where}.seed", f"expected an integer, got {seed!r}"))
    defaults = attrs.fields_dict(Settings)
    values = {key: _positive_int(raw, key, defaults[key].default, problems, where, least)
              for key, least in (("trials", 1), ("parallel", 1), ("startup_trials", 0), ("warmup_steps", 0))}
    if space is not None and sampler == "grid" and space.grid() is None:
        problems.append((f"{where}.sampler", 'the grid sampler needs every parameter discrete: give each float a '
                                             'step, or use type = "choice"'))
    if problems:
        raise SpecError(problems)
    return Settings(space, sampler=sampler, pruner=pruner, objectives=tuple(objectives), study=raw.get("study"),
                    storage=raw.get("storage"), seed=seed, **values)


def load_study(spec_path: Path, space_path: Path | None, registry, overrides: tuple[str, ...] = (),
               options: dict | None = None, env: dict | None = None) -> Study:
    """The spec (its ``[tune]`` table taken out), the settings (``--space`` file over the spec's table,
    command-line ``options`` over both), every problem at once; then every parameter's corners are
    tried in the spec, so a wrong key or a value no spec takes stops the study before it starts."""
    import os

    from mtbert.config.spec import structure_spec

    env = os.environ if env is None else env
    data = read_toml(spec_path)
    raw = data.pop("tune", None)
    if space_path is not None:  # the content of a [tune] table (or a file holding one)
        raw = read_toml(space_path)
        raw = raw["tune"] if set(raw) == {"tune"} else raw
    if raw is None:
        raise SpecError([("tune", "no search space: give --space SPACE.toml, or a [tune] table with "
                                  '[tune.params."<spec key>"] tables in the spec')], str(spec_path))
    raw = copy.deepcopy(raw)
    raw.update({k: v for k, v in (options or {}).items() if v is not None})
    if env.get("MTBERT_DATA"):
        apply_override(data, ["data", "dir"], env["MTBERT_DATA"])
    for text in overrides:
        apply_override(data, *parse_override(text))
    spec = structure_spec(data, registry, str(spec_path))  # the spec alone is valid, or nothing runs
    no_dev = [name for name, task in spec.tasks.items() if task.data.dev is None]
    if no_dev:
        raise SpecError([(f"tasks.{name}.data.dev", "a study scores every trial on the dev data; give this task "
                                                    "a dev file") for name in no_dev], str(spec_path))
    try:
        settings = parse_settings(raw, tuple(spec.tasks))
        check_against_spec(settings.space, data, lambda d: structure_spec(d, registry, str(spec_path)))
    except SpecError as exc:
        raise SpecError(exc.problems, str(space_path or spec_path)) from None
    if settings.seed is None:  # the sampler's draws are as reproducible as the runs
        settings = attrs.evolve(settings, seed=spec.seed)
    return Study(settings, data, Path(spec_path))
