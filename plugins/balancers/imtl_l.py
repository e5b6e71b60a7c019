"""imtl_l: IMTL-L, the loss half of Impartial Multi-Task Learning, Liu, Li, Kuang, Xue,
Chen, Yang, Liao & Zhang (2021), "Towards Impartial Multi-task Learning" (ICLR), eq. 3.

Each task t learns a scale s_t and trains on

    exp(s_t) w_t L_t - s_t        (w_t the spec weight),

whose derivative in s_t, exp(s_t) w_t L_t - 1, vanishes when the scaled loss
is 1: every task's scaled loss is pulled to the same value, whatever its
units, so none dominates by scale alone. s_t starts at ``init`` (0) and
trains at its own ``lr`` (a handful of scalars: at the encoder's rate they
would barely move), not weight-decayed. The paper's hybrid, IMTL, is this
balancer with the ``imtl`` gradient method (IMTL-G) in one spec:
``balancer = "imtl_l"`` and ``gradient = "imtl"``.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Balancer, LoopContext, TaskInfo
from mtbert.plugin.structure import greater_than


@attrs.frozen
class ImtlLOptions:
    lr: float = attrs.field(default=1e-2, validator=greater_than(0.0))  # of the scales s_t
    init: float = 0.0  # starting s_t of every task


class ImtlL(Balancer):
    """Learn each task's loss scale exp(s_t), pulling every scaled loss to 1."""

    provides = frozenset({"learnable_task_weights"})

    def __init__(self, options: ImtlLOptions):
        super().__init__(options)
        self.lr = options.lr
        self.scales = nn.ParameterDict()

    def setup(self, tasks: dict[str, TaskInfo], context: LoopContext) -> None:
        super().setup(tasks, context)
        for task in tasks:
            self.scales[task] = nn.Parameter(torch.full((), float(self.options.init), device=context.device))

    def weigh(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        return {task: torch.exp(self.scales[task]) * self.tasks[task].weight * loss - self.scales[task]
                for task, loss in losses.items()}

    def stats(self) -> dict[str, Tensor]:
        """exp(s_t) of every task."""
        return {f"scale/{t}": s.detach().exp() for t, s in self.scales.items()}


@hookimpl
def register_balancers(register):
    register("imtl_l", ImtlL, options=ImtlLOptions)
