"""adamw: torch's AdamW (Loshchilov & Hutter 2019), fused on CUDA.

Weight decay applies to the parameter groups marked ``decay`` (not to
biases and LayerNorm weights, as in BERT's original recipe).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from mtbert.hookspecs import hookimpl
from mtbert.interfaces import ParamGroup
from mtbert.structure import at_least, greater_than


@attrs.frozen
class AdamWOptions:
    weight_decay: float = attrs.field(default=0.01, validator=at_least(0.0))
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = attrs.field(default=1e-8, validator=greater_than(0.0))
    fused: Literal["auto", "on", "off"] = "auto"  # auto: fused kernels when on CUDA

    def check(self):
        for i, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                yield f"betas[{i}]", f"must be in [0, 1), got {beta}"


def build_adamw(options: AdamWOptions, groups: list[ParamGroup]) -> torch.optim.Optimizer:
    """AdamW, decoupled weight decay; fused CUDA kernels when available."""
    params = [p for g in groups for p in g.params]
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    fused = options.fused == "on" or (options.fused == "auto" and on_cuda)
    torch_groups = [{"params": g.params, "lr": g.lr, "name": g.name,
                     "weight_decay": options.weight_decay if g.decay else 0.0} for g in groups]
    return torch.optim.AdamW(torch_groups, betas=options.betas, eps=options.eps, fused=fused or None)


@hookimpl
def register_optimizers(register):
    register("adamw", build_adamw, config=AdamWOptions)
