"""rlw: Random Loss Weighting, Lin, Ye, Zhang & Tsang (2022), "Reasonable
Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning"
(TMLR, arXiv:2111.10603), the normal-distribution variant.

At every optimizer step, z ~ N(0, I) (one draw per task) and the step trains
on sum_t w_t L_t with w = softmax(z) over the step's tasks. All micro-batches
of a step share the draw, so accumulation still acts as a bigger batch.
``total = "one"`` is the paper's w (it sums to 1); ``"tasks"`` multiplies it
by the number of tasks in the step, so E[w_t] = 1 and the update keeps the
scale of the plain sum. Spec weights multiply on top.

The draws come from the balancer's own generator, seeded by ``seed`` and
saved in the training state: every process draws the same weights (the
global torch RNG is seeded per rank, for dropout) and a resumed run replays
them. They are drawn on the host and copied to the device from pinned
memory without waiting; nothing is read back.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Balancer, LoopContext, TaskInfo
from mtbert.plugin.structure import at_least


@attrs.frozen
class RlwOptions:
    seed: int = attrs.field(default=0, validator=at_least(0))
    total: Literal["one", "tasks"] = "one"  # the weights sum to 1 (the paper's) or to the step's task count


class Rlw(Balancer):
    """Random loss weighting: softmax of N(0, 1) draws, new each optimizer step."""

    def __init__(self, options: RlwOptions):
        super().__init__(options)
        self.generator = torch.Generator().manual_seed(options.seed)
        self.draw: Tensor | None = None  # this optimizer step's z, on the device

    def setup(self, tasks: dict[str, TaskInfo], context: LoopContext) -> None:
        super().setup(tasks, context)
        self.last = torch.zeros(len(self.names), device=context.device)  # the last step's weights, to log

    def _draw(self) -> Tensor:
        z = torch.randn(len(self.names), generator=self.generator)
        if self.context.device.type == "cuda":  # from pageable memory even a non-blocking copy may wait
            z = z.pin_memory()
        return z.to(self.context.device, non_blocking=True)

    def weigh(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.draw is None:
            self.draw = self._draw()
        idx = [self.names.index(t) for t in losses]
        w = torch.softmax(torch.stack([self.draw[i] for i in idx]), dim=0)
        if self.options.total == "tasks":
            w = w * len(idx)
        for k, i in enumerate(idx):
            self.last[i] = w[k]
        return {t: losses[t] * (w[k] * self.task_weights[i]) for k, (t, i) in enumerate(zip(losses, idx))}

    def after_step(self, losses: dict[str, Tensor]) -> None:
        self.draw = None  # the next step draws anew

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def stats(self) -> dict[str, Tensor]:
        return {f"weight/{t}": self.last[i] for i, t in enumerate(self.names)}


@hookimpl
def register_balancers(register):
    register("rlw", Rlw, options=RlwOptions)
