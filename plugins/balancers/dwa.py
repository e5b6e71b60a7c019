"""dwa: Dynamic Weight Average, Liu, Johns & Davison (2019), "End-to-End Multi-Task
Learning with Attention" (CVPR), eq. 7.

With L_t(e) task t's mean training loss over epoch e, for epoch e >= 3

    r_t = L_t(e - 1) / L_t(e - 2),      w_t = T exp(r_t / tau) / sum_i exp(r_i / tau),

and w_t = 1 in the first two epochs (no ratio exists yet); tau = 2 (the
paper's). A task whose loss fell slowly last epoch (r_t near or above 1) gets
more weight. The weights sum to T, so the update keeps the scale of the
plain sum. Each loss is also multiplied by its task's spec weight.

The epoch means come from the loop's ``epoch_end`` (averaged across
processes, on the device); the weights are computed there and kept as a
buffer, so a step reads nothing back. Epochs count per run: a balancer shared
by two phases keeps its loss history across them. Tasks a phase does not
train keep their last epoch's loss.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Balancer, LoopContext, TaskInfo
from mtbert.plugin.structure import greater_than


@attrs.frozen
class DwaOptions:
    temperature: float = attrs.field(default=2.0, validator=greater_than(0.0))  # the paper's tau


class Dwa(Balancer):
    """Dynamic weight average: weights from the ratio of each task's last two epoch losses."""

    def __init__(self, options: DwaOptions):
        super().__init__(options)

    def setup(self, tasks: dict[str, TaskInfo], context: LoopContext) -> None:
        super().setup(tasks, context)
        count = len(self.names)
        # history[0]: epoch e - 2, history[1]: epoch e - 1; `seen` epochs so far (up to 2)
        self.register_buffer("history", torch.zeros(2, count, device=context.device))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long, device=context.device))
        self.register_buffer("weights", torch.ones(count, device=context.device))

    def weigh(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        weights = self.weights * self.task_weights
        return {t: loss * weights[self.names.index(t)] for t, loss in losses.items()}

    def epoch_end(self, epoch: int, losses: dict[str, Tensor]) -> None:
        latest = self.history[1].clone()
        for task, loss in losses.items():
            latest[self.names.index(task)] = loss.float()
        self.history.copy_(torch.stack([self.history[1], latest]))
        self.seen.copy_((self.seen + 1).clamp_max(2))
        ratio = self.history[1] / self.history[0].clamp_min(1e-12)
        dynamic = len(self.names) * torch.softmax(ratio / self.options.temperature, dim=0)
        self.weights.copy_(torch.where(self.seen >= 2, dynamic, torch.ones_like(dynamic)))

    def stats(self) -> dict[str, Tensor]:
        return {f"weight/{t}": self.weights[i] for i, t in enumerate(self.names)}


@hookimpl
def register_balancers(register):
    register("dwa", Dwa, options=DwaOptions)
