"""sum: the plain multitask update, the gradient of the (weighted) sum of task losses."""

from __future__ import annotations

import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import GradientMethod


class Sum(GradientMethod):
    """Backpropagate the sum of the step's task losses."""

    needs_all_tasks = False

    def __init__(self, options):
        pass

    def backward(self, losses: dict[str, Tensor]) -> None:
        torch.stack(list(losses.values())).sum().backward()


@hookimpl
def register_gradients(register):
    register("sum", Sum)
