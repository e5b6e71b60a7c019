"""pearson: one minus Pearson's correlation over the batch (report 000).

    L = 1 - r(x, y),   r = mean(xc * yc) / (sqrt(mean(xc^2) + eps) * sqrt(mean(yc^2) + eps))

with x the head's outputs, y the labels and xc = x - mean(x), yc = y - mean(y)
over the batch. L is 0 for predictions perfectly (and positively) correlated
with the labels, whatever their scale and offset, 1 for uncorrelated ones and
2 for perfectly anti-correlated ones. r is undefined for a batch of one
example or constant predictions/labels, so: a batch of fewer than 2 examples
gives 0 (still attached to the graph, so backward works), and eps (1e-8, on
the variances) keeps a constant batch finite (r = 0 there, L = 1).
"""

from __future__ import annotations

from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Loss

EPS = 1e-8


def correlation(x: Tensor, y: Tensor, eps: float = EPS) -> Tensor:
    """Pearson's r of two 1-D tensors, eps-guarded (see the module docstring)."""
    xc, yc = x - x.mean(), y - y.mean()
    return (xc * yc).mean() / ((xc.pow(2).mean() + eps).sqrt() * (yc.pow(2).mean() + eps).sqrt())


class PearsonLoss(Loss):
    """1 - Pearson's r between outputs and labels over the batch (real-valued tasks)."""

    accepts = frozenset({"regression", "similarity"})

    def __init__(self, options, labels=None):
        pass

    def __call__(self, output: Tensor, labels: Tensor) -> Tensor:
        x, y = output.float().reshape(-1), labels.float().reshape(-1)
        if x.numel() < 2:
            return x.sum() * 0.0
        return 1.0 - correlation(x, y)


@hookimpl
def register_losses(register):
    register("pearson", PearsonLoss)
