"""initial_loss: each task's loss divided by its loss at the first optimizer step.

Tasks of different kinds start at very different loss scales (SST-5's
cross-entropy near log 5 = 1.6, an STS regression's MSE near 4 on a 0..5
scale), so a plain sum lets the largest dominate the first updates. Dividing
each task's loss by its own first-step value, L_t / L_t(0), puts every task
at 1 when training starts; the ratio is the "inverse training rate" of
GradNorm (Chen et al. 2018, section 3.2), used here directly as a weighting.
The first step trains on the plain (weighted) sum, since L_t(0) is measured
on it.

It shows a balancer with learned state that is not a parameter: L_t(0) is a
buffer per task, filled on the device at the first ``step_end`` (no value
is read back to the host), saved in the training state and the checkpoint,
and restored by ``--resume``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtbert.hookspecs import hookimpl
from mtbert.interfaces import Balancer, LoopContext, TaskInfo


class InitialLoss(Balancer):
    """Each task's loss divided by its first-step loss (every task starts at 1)."""

    def setup(self, tasks: dict[str, TaskInfo], context: LoopContext) -> None:
        super().setup(tasks, context)
        # 0 marks "not measured yet": a task first seen in a later step (another phase) is measured then
        self.register_buffer("initial", torch.zeros(len(self.names), device=context.device))

    def weigh(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for task, loss in losses.items():
            first = self.initial[self.names.index(task)]
            scale = torch.where(first > 0, 1.0 / first.clamp_min(1e-12), 1.0)
            out[task] = loss * (scale * self.tasks[task].weight)
        return out

    def step_end(self, losses: dict[str, Tensor]) -> None:
        for task, loss in losses.items():
            i = self.names.index(task)
            self.initial[i] = torch.where(self.initial[i] > 0, self.initial[i], loss.detach().float())

    def stats(self) -> dict[str, Tensor]:
        return {f"initial_loss/{t}": self.initial[i] for i, t in enumerate(self.names)}


@hookimpl
def register_balancers(register):
    register("initial_loss", InitialLoss)
