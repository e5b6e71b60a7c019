"""mse: mean squared error between predicted and true scores."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Loss


class MeanSquaredError(Loss):
    """Mean squared error (regression tasks)."""

    accepts = frozenset({"regression"})

    def __init__(self, options, labels=None):
        pass

    def __call__(self, output: Tensor, labels: Tensor) -> Tensor:
        return F.mse_loss(output.float(), labels.float())


@hookimpl
def register_losses(register):
    register("mse", MeanSquaredError)
