"""Training state for ``--resume``: everything needed to continue a run exactly.

A state is written between two steps into ``<run>/state/``: the model's
weights, the optimizer's and the schedule's state, the states of the
gradient method and regularizers that have one, the RNG states, the data
streams' positions and the loop's counters. Tensors go to safetensors and
everything else to JSON, so reading a state never unpickles anything. Like
checkpoints, a state is written into a temporary sibling and renamed into
place: a crash mid-write leaves the previous state whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mtbert.base.tensorfiles import save as save_file

from mtbert.base.atomic import recover, write_directory
from mtbert.base.errors import CheckpointError

TENSORS, TREE = "tensors.safetensors", "state.json"


def flatten(tree: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Nested dicts/lists of tensors and JSON values -> a JSON skeleton; tensors go to ``tensors``."""
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree.detach().to("cpu").contiguous()
        return {"__tensor__": prefix}
    if isinstance(tree, dict):
        return {"__dict__": [[flatten(k, tensors, f"{prefix}.k{i}"), flatten(v, tensors, f"{prefix}.{i}")]
                             for i, (k, v) in enumerate(tree.items())]}
    if isinstance(tree, (list, tuple)):
        return {"__list__": [flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(tree)],
                "tuple": isinstance(tree, tuple)}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store a {type(tree).__name__} in a training state")


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {unflatten(k, tensors): unflatten(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, dict) and "__list__" in skeleton:
        items = [unflatten(v, tensors) for v in skeleton["__list__"]]
        return tuple(items) if skeleton["tuple"] else items
    return skeleton


def save_state(directory: Path, tree: dict) -> None:
    """Write ``tree`` atomically into ``directory``."""
    def fill(tmp: Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        skeleton = flatten(tree, tensors)
        save_file(tensors, tmp / TENSORS)
        (tmp / TREE).write_text(json.dumps(skeleton))

    write_directory(directory, fill, "the training state")


def load_state(directory: Path) -> dict:
    directory = Path(directory)
    recover(directory)
    if not (directory / TREE).is_file():
        raise CheckpointError(f"no training state in {directory}: the run saved none before it stopped "
                              "(states are written every train.save_every steps and after each epoch's last step)")
    try:
        tensors = load_file(str(directory / TENSORS))
        return unflatten(json.loads((directory / TREE).read_text()), tensors)
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"the training state in {directory} is unreadable: {exc}") from None
    except (RecursionError, TypeError, ValueError, AttributeError) as exc:  # well-formed JSON of another shape
        what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise CheckpointError(f"the training state in {directory} is damaged: {what}\n"
                              "  fix: resume from an earlier copy of the run, or start it again; "
                              "the run directory was left as it was") from None


def peek(directory: Path) -> dict:
    """A saved state's counters (step, finished, ...), without reading its tensors; {} when there
    is no readable state."""
    directory = Path(directory)
    recover(directory)
    try:
        skeleton = json.loads((directory / TREE).read_text())
        counters = dict(skeleton.get("__dict__", [])).get("counters", {})
        return {k: v for k, v in counters.get("__dict__", []) if isinstance(k, str) and not isinstance(v, dict)}
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError, RecursionError):
        return {}


STATE_FORMAT = 2  # the tree's layout: {"format", one entry per stateful part by name}; 1 had no "format"


class RandomState:
    """Every rank's random generators (torch, Python's, CUDA's) as one stateful part of the run:
    ``state_dict`` gathers them from every process (a collective: every rank calls it), and
    ``load_state_dict`` sets this rank's."""

    def __init__(self, group):
        self.group = group

    def state_dict(self) -> list[dict]:
        return self.group.gather_objects(rng_state())

    def load_state_dict(self, states: list[dict]) -> None:
        set_rng_state(states[self.group.rank])


def rng_state() -> dict:
    import random

    state = {"torch": torch.get_rng_state(), "python": _python_rng(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_rng(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]
