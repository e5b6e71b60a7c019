"""Checkpoints: weights in safetensors (nothing that unpickles), written atomically.

A checkpoint directory holds ``model.safetensors`` (every tensor of the
multitask model), ``balancers.safetensors`` (a balancer's parameters and
buffers, when it has any), ``encoder/`` (config and tokenizer files, enough to rebuild
the encoder without its original source) and ``meta.json``. It is written
into a temporary sibling and renamed into place, so an interrupted write
leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mtbert.base.tensorfiles import save as save_file

from mtbert import __version__
from mtbert.base.atomic import recover, write_directory
from mtbert.base.errors import CheckpointError
from mtbert.base.paths import WEIGHTS, find_checkpoint, is_file  # noqa: F401  (find_checkpoint: part of this module's API)

EXTRA = "balancers.safetensors"


def save_checkpoint(model, directory: Path, meta: dict, extra: dict[str, torch.Tensor] | None = None) -> None:
    """``extra``: tensors that are not the model's (a balancer's learned task weights), kept beside it
    in ``balancers.safetensors`` for whoever wants to read them; loading a model never needs them."""
    def fill(tmp: Path) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS, metadata={"format": "pt", "mtbert": __version__})
        if extra:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in extra.items()}, tmp / EXTRA,
                      metadata={"format": "pt", "mtbert": __version__})
        model.encoder.save_architecture(tmp / "encoder")
        (tmp / "meta.json").write_text(json.dumps({"mtbert": __version__, **meta}, indent=2))

    write_directory(directory, fill, "the best checkpoint")


def load_weights(model, directory: Path) -> None:
    """Load a checkpoint's tensors into ``model``; refuse any that do not fit, naming them."""
    recover(Path(directory))
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"no {WEIGHTS} in {directory}: not an mtbert checkpoint directory")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    own = model.state_dict()
    shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in tensors and tensors[k].shape != own[k].shape]
    problems = shapes[:8] + ([f"... and {len(shapes) - 8} more tensors of another shape"] if len(shapes) > 8 else [])
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if missing:
        problems.append("missing from the checkpoint: " + _some(missing))
    if unexpected:
        problems.append("in the checkpoint but not in the model: " + _some(unexpected))
    if problems:
        raise CheckpointError(f"{path} does not fit the model built from the spec:\n  " + "\n  ".join(problems)
                              + "\n  fix: use the spec the checkpoint was trained with (its run's spec.toml)")
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor)


def _some(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
