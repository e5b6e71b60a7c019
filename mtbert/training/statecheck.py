"""A training state checked against what the run needs, before any of it is used.

``--resume`` reads ``RUN/state``: a tree of JSON values and tensors that a
crash, a full disk, a hand edit or another version could have left in any
shape. Loaded blindly, a list where the counters should be, a missing key, a
string step or an RNG state replaced by a number ended in twelve different
tracebacks, and an Adam moment of the wrong size made the fused AdamW kernel
write out of bounds. So the saved tree is compared, part by part, with the
same tree of the run being resumed (built from the same spec, so it has the
same keys, shapes and dtypes): a difference is a ``CheckpointError`` naming
the state, the part and what is wrong, raised before the run directory is
touched (the CLI exits with 2).
"""

from __future__ import annotations

from torch import Tensor

from mtbert.base.errors import CheckpointError

SCALARS = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}  # a fresh value's type -> saved types
FREE = {"evaluator/best", "meter", "regularizers", "data"}  # parts whose saved shape may differ from a fresh one
OPTIONAL = {"data"}  # parts a state written by an earlier version of this format may lack


class Damaged(Exception):
    """What is wrong, and where in the tree."""


def same_shape(saved, fresh, where: str, free: bool = False) -> None:
    """Raise Damaged where ``saved`` does not have ``fresh``'s shape: tensors of the same shape and
    dtype, dicts with the same keys (``free``: only that they are dicts of the right kind of values),
    lists of the same length, scalars of the same type. None in ``fresh`` accepts anything."""
    if fresh is None:
        return
    if isinstance(fresh, Tensor):
        if not isinstance(saved, Tensor):
            raise Damaged(f"{where}: a tensor was expected, found {type(saved).__name__}")
        if saved.shape != fresh.shape or saved.dtype != fresh.dtype:
            raise Damaged(f"{where}: shape {tuple(saved.shape)} {saved.dtype}, the run needs "
                          f"{tuple(fresh.shape)} {fresh.dtype}")
        return
    if isinstance(fresh, dict):
        if not isinstance(saved, dict):
            raise Damaged(f"{where}: a table was expected, found {type(saved).__name__}")
        if free:
            return
        missing = [k for k in fresh if k not in saved]
        if missing:
            raise Damaged(f"{where}: no {missing[0]!r}")
        extra = [k for k in saved if k not in fresh]
        if extra:
            raise Damaged(f"{where}: {extra[0]!r} is not part of this run")
        for key in fresh:
            same_shape(saved[key], fresh[key], f"{where}/{key}", free)
        return
    if isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)):
            raise Damaged(f"{where}: a list was expected, found {type(saved).__name__}")
        if len(saved) != len(fresh):
            raise Damaged(f"{where}: {len(saved)} entries, the run needs {len(fresh)}")
        for i, (a, b) in enumerate(zip(saved, fresh)):
            same_shape(a, b, f"{where}/{i}", free)
        return
    kind = type(fresh)  # bool before int: True is an int too
    if kind in SCALARS and (not isinstance(saved, SCALARS[kind]) or (kind is not bool and isinstance(saved, bool))):
        raise Damaged(f"{where}: {saved!r} is not a {kind.__name__}")


def check_counters(counters: dict, phases: int) -> None:
    if counters["step"] < 0 or counters["phase_start"] < 0 or counters["phase_start"] > counters["step"]:
        raise Damaged(f"counters: step {counters['step']} and phase start {counters['phase_start']} do not fit")
    if not 0 <= counters["phase"] <= phases:
        raise Damaged(f"counters: phase {counters['phase']} of a run with {phases}")
    if counters["epoch"] < 1 or counters["index"] < 0:
        raise Damaged(f"counters: epoch {counters['epoch']}, index {counters['index']}")


def check_streams(state: dict, streams: dict) -> None:
    for task in streams:
        position = state[f"streams/{task}"]
        if position["pass_number"] < 0 or position["position"] < 0:
            raise Damaged(f"streams/{task}: a negative position {position}")


def check_optimizer(saved: dict, optimizer) -> None:
    """The saved optimizer state against the phase's optimizer: the same groups, each as many
    parameters, and every per-parameter tensor as large as its parameter or a single number."""
    same_shape(saved, {"state": {}, "param_groups": []}, "optimizer", free=True)
    groups, params = saved["param_groups"], [p for g in optimizer.param_groups for p in g["params"]]
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise Damaged(f"optimizer: {len(groups) if isinstance(groups, list) else groups!r} parameter groups, "
                      f"the run has {len(optimizer.param_groups)}")
    for i, (group, ours) in enumerate(zip(groups, optimizer.param_groups)):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list) \
                or len(group["params"]) != len(ours["params"]):
            raise Damaged(f"optimizer/param_groups/{i}: not the run's group of {len(ours['params'])} parameters")
    for index, values in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(values, dict):
            raise Damaged(f"optimizer/state/{index!r}: no such parameter in the run")
        for name, value in values.items():
            if isinstance(value, Tensor) and value.numel() not in (1, params[index].numel()):
                raise Damaged(f"optimizer/state/{index}/{name}: {tuple(value.shape)}, the parameter is "
                              f"{tuple(params[index].shape)}")


def check_state(state, fresh: dict, where, phases: int, streams: dict, world: int) -> None:
    """``state``: the saved tree; ``fresh``: the same parts' ``state_dict()`` in the run being resumed
    (before any phase's parts exist). Raises CheckpointError naming ``where`` and what is wrong."""
    try:
        if not isinstance(state, dict):
            raise Damaged(f"the tree is {type(state).__name__}, not a table")
        if not isinstance(state.get("random"), list) or len(state["random"]) != world:
            saved = state.get("random")
            count = len(saved) if isinstance(saved, list) else saved
            raise Damaged(f"random: {count!r} process(es)' generators, this run has {world} "
                          "(resume a run with as many processes as it was started with)")
        for name, part in fresh.items():
            if name not in state:
                if name in OPTIONAL:
                    continue
                raise Damaged(f"no {name!r}")
            free = any(name == f or name.startswith(f + "/") for f in FREE)
            if name == "evaluator":
                same_shape(state[name], {**part, "best": None}, name)
            elif name == "random":
                for rank, generators in enumerate(state[name]):
                    same_shape(generators, part[0], f"random/{rank}")
            else:
                same_shape(state[name], part, name, free)
        check_counters(state["counters"], phases)
        check_streams(state, streams)
    except Damaged as exc:
        raise CheckpointError(f"the training state in {where} is damaged: {exc}\n"
                              "  fix: resume from an earlier copy of the run, or start it again; "
                              "the run directory was left as it was") from None


def check_phase(state: dict, parts, where) -> None:
    """The optimizer's, schedule's and gradient method's saved state against the phase's parts, once
    they are built (before any is loaded)."""
    try:
        if "optimizer" not in state or "scheduler" not in state:
            raise Damaged("no optimizer or schedule state for the phase in progress")
        check_optimizer(state["optimizer"], parts.optimizer)
        same_shape(state["scheduler"], parts.scheduler.state_dict(), "scheduler", free=True)
        if hasattr(parts.gradient, "state_dict"):
            if "gradient" not in state:
                raise Damaged("no gradient-method state")
            same_shape(state["gradient"], parts.gradient.state_dict(), "gradient")
    except Damaged as exc:
        raise CheckpointError(f"the training state in {where} is damaged: {exc}\n"
                              "  fix: resume from an earlier copy of the run, or start it again; "
                              "the run directory was left as it was") from None
