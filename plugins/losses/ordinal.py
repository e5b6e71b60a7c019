"""ordinal: the ordinal log loss (Castagnos et al. 2022, "A Simple Log-based Loss
Function for Ordinal Text Classification", COLING; report 001).

    L = - sum_i log(1 - p_i) * |i - y|^alpha,   p = softmax(logits),

averaged over the batch, with y the true class and i running over the
classes (which must be ordered: SST-5's 0 = negative .. 4 = positive). The
true class has weight 0; probability on a class far from the true one costs
more than on a near one. alpha is 1 or 1.5 in the paper (default 1). 1 - p_i
is clamped to at least 1e-7 so a class with all the mass gives a large
finite loss instead of log(0).
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Loss
from mtbert.plugin.structure import greater_than

FLOOR = 1e-7


@attrs.frozen
class OrdinalOptions:
    alpha: float = attrs.field(default=1.0, validator=greater_than(0.0))


class OrdinalLogLoss(Loss):
    """Ordinal log loss: -sum_i log(1 - p_i) |i - y|^alpha (multi-class tasks with ordered classes)."""

    accepts = frozenset({"multiclass"})

    def __init__(self, options: OrdinalOptions, labels=None):
        self.alpha = options.alpha

    def __call__(self, output: Tensor, labels: Tensor) -> Tensor:
        p = output.float().softmax(-1)  # [batch, classes]
        classes = torch.arange(p.shape[-1], device=p.device, dtype=p.dtype)
        weights = (classes.unsqueeze(0) - labels.to(p.dtype).unsqueeze(-1)).abs().pow(self.alpha)
        return -(torch.log((1.0 - p).clamp_min(FLOOR)) * weights).sum(-1).mean()


@hookimpl
def register_losses(register):
    register("ordinal", OrdinalLogLoss, options=OrdinalOptions)
