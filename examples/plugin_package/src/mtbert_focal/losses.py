"""focal: the focal loss of Lin, Goyal, Girshick, He & Dollar (2017), "Focal
Loss for Dense Object Detection", ICCV (arXiv:1708.02002), eq. 4.

For one example with true class y and predicted probability p_t of it,

    FL(p_t) = -(1 - p_t)^gamma * log(p_t)

averaged over the batch. gamma = 0 is the plain cross-entropy; gamma > 0
down-weights well-classified examples (p_t near 1) so that the loss
concentrates on hard ones (the paper uses gamma = 2). The paper's optional
class weight alpha_t is not included.

- "multiclass" heads (C logits): p = softmax(logits), p_t = p[y].
- "binary" heads (one logit z): p = sigmoid(z), p_t = p for y = 1 and
  1 - p for y = 0; this is the paper's own binary form.

log p_t comes from log_softmax / logsigmoid (exact for large logits) and
1 - p_t from -expm1(log p_t); 1 - p_t is clamped at the smallest positive
float before the power, so a perfectly classified example with 0 < gamma < 1
gives a finite gradient (0) instead of 0 * inf. Computed in float32.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from mtbert.hookspecs import hookimpl
from mtbert.interfaces import LabelSpec, Loss
from mtbert.structure import at_least


@attrs.frozen
class FocalOptions:
    gamma: float = attrs.field(default=2.0, validator=at_least(0.0))  # focusing parameter; 0 = cross-entropy


def focal_terms(log_pt: Tensor, gamma: float) -> Tensor:
    """-(1 - p_t)^gamma * log p_t, elementwise, from log p_t."""
    one_minus = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    return -one_minus.pow(gamma) * log_pt


class FocalLoss(Loss):
    """Focal loss -(1 - p_t)^gamma log p_t (Lin et al. 2017), for multi-class and binary heads."""

    accepts = frozenset({"multiclass", "binary"})

    def __init__(self, options: FocalOptions, labels: LabelSpec):
        self.gamma = options.gamma
        self.binary = labels.kind == "binary"

    def __call__(self, output: Tensor, labels: Tensor) -> Tensor:
        logits = output.float()
        if self.binary:  # output [B] logits, labels [B] in {0, 1}
            signed = torch.where(labels.bool(), logits, -logits)  # log p_t = logsigmoid(+-z)
            log_pt = F.logsigmoid(signed)
        else:  # output [B, C] logits, labels [B] class ids
            log_pt = F.log_softmax(logits, dim=-1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
        return focal_terms(log_pt, self.gamma).mean()


@hookimpl
def register_losses(register):
    register("focal", FocalLoss, config=FocalOptions)
