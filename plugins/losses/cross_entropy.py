"""cross_entropy: softmax cross-entropy over class logits, with optional label smoothing
(Szegedy et al. 2016: the target puts 1 - eps on the true class and eps / C on every class)."""

from __future__ import annotations

import attrs
import torch.nn.functional as F
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Loss
from mtbert.plugin.structure import probability


@attrs.frozen
class CrossEntropyOptions:
    label_smoothing: float = attrs.field(default=0.0, validator=probability)


class CrossEntropy(Loss):
    """Cross-entropy over class logits (multi-class tasks)."""

    accepts = frozenset({"multiclass"})

    def __init__(self, options: CrossEntropyOptions, labels=None):
        self.label_smoothing = options.label_smoothing

    def __call__(self, output: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), labels, label_smoothing=self.label_smoothing)


@hookimpl
def register_losses(register):
    register("cross_entropy", CrossEntropy, options=CrossEntropyOptions)
