"""bce: binary cross-entropy on one logit per example."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Loss
from mtbert.plugin.structure import greater_than


@attrs.frozen
class BceOptions:
    pos_weight: float | None = attrs.field(default=None, validator=greater_than(0))


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy with logits (binary tasks); pos_weight up-weights positives."""

    accepts = frozenset({"binary"})

    def __init__(self, options: BceOptions, labels=None):
        self.pos_weight = options.pos_weight

    def __call__(self, output: Tensor, labels: Tensor) -> Tensor:
        # torch.full fills on the device; new_tensor would copy a host value there, a wait on every step
        pos_weight = None if self.pos_weight is None else torch.full((), self.pos_weight, device=output.device)
        return F.binary_cross_entropy_with_logits(output.float(), labels.float(), pos_weight=pos_weight)


@hookimpl
def register_losses(register):
    register("bce", BinaryCrossEntropy, options=BceOptions)
