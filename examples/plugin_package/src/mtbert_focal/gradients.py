"""rlw: Random Loss Weighting, Lin, Ye, Zhang & Tsang (2022), "Reasonable
Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning",
TMLR (arXiv:2111.10603), the normal-distribution variant.

At every optimizer step, draw eps_t ~ N(0, 1) independently for each task,
and train on the weighted sum of the step's task losses

    L = sum_t lambda_t * L_t,      lambda = softmax(eps)

(so the weights are positive and sum to 1). The weights are drawn once per
optimizer step: with ``train.accumulate = k`` all k micro-batches of a step
share them, so accumulation still acts as a bigger batch. When a step holds
only some of the phase's tasks, the softmax runs over those tasks' eps.

``total`` sets the scale: "one" is the paper's (and LibMTL's) lambda, which
sums to 1, so the update is 1/T the size of mtbert's default ``sum``;
"tasks" (default) multiplies lambda by the number of tasks T in the step, so
E[T lambda_t] = 1 and the update has the scale of ``sum`` -- only the mix of
the tasks is random, and swapping ``gradient = "sum"`` for ``"rlw"`` needs no
new learning rate.

The weights are relative between tasks, so RLW needs every task in every
step: use ``sampler = "all_tasks"`` (validation refuses one-task-per-step
samplers, because the class says ``needs_all_tasks = True``). The draws come
from the method's own seeded generator, saved in the training state, so a
run resumed with ``--resume`` draws the same weights, and under ``torchrun``
every rank draws the same weights (one draw per optimizer step on each), so
the loop's average of ``.grad`` across ranks is the weighted gradient of the
global batch. (The global torch RNG would not do: each rank seeds it
differently, for its own dropout masks.)
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor, nn

from mtbert.hookspecs import hookimpl
from mtbert.interfaces import GradientMethod, LoopContext
from mtbert.structure import at_least


@attrs.frozen
class RlwOptions:
    seed: int = attrs.field(default=0, validator=at_least(0))  # of the weights' generator
    total: Literal["tasks", "one"] = "tasks"  # the weights sum to T (scale of "sum") or to 1 (the paper's)


class RandomLossWeighting(GradientMethod):
    """Random loss weighting (RLW): task losses weighted by softmax of N(0, 1) draws each step."""

    needs_all_tasks = True

    def __init__(self, options: RlwOptions):
        self.options = options
        self.generator = torch.Generator().manual_seed(options.seed)
        self.eps: dict[str, float] | None = None  # this optimizer step's draws, by task
        self.used: dict[str, float] = {}  # the weights applied since the last finish()

    def setup(self, shared: list[tuple[str, nn.Parameter]], private: list[nn.Parameter],
              tasks: list[str], context: LoopContext) -> None:
        super().setup(shared, private, tasks, context)
        self.eps, self.used = None, {}

    def noise(self, count: int) -> Tensor:
        """``count`` independent standard-normal draws (float64, CPU)."""
        return torch.randn(count, generator=self.generator, dtype=torch.float64)

    def weights(self, present: list[str]) -> dict[str, float]:
        """lambda over the tasks ``present``, from this step's draws (made on first use)."""
        if self.eps is None:
            # one draw per task of the phase, in a fixed order, so a seed gives one sequence
            self.eps = dict(zip(self.tasks, self.noise(len(self.tasks)).tolist()))
        eps = torch.tensor([self.eps[t] for t in present], dtype=torch.float64)
        lam = torch.softmax(eps, dim=0)
        if self.options.total == "tasks":
            lam = lam * len(present)
        return dict(zip(present, lam.tolist()))

    def backward(self, losses: dict[str, Tensor]) -> None:
        lam = self.weights(list(losses))
        torch.stack([loss * lam[task] for task, loss in losses.items()]).sum().backward()
        self.used.update(lam)

    def finish(self) -> dict[str, float]:
        stats = {f"weight/{task}": value for task, value in self.used.items()}
        self.eps, self.used = None, {}
        return stats

    # -- for --resume: the training state stores tensors and JSON values ------------------
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@hookimpl
def register_gradient_methods(register):
    register("rlw", RandomLossWeighting, config=RlwOptions)
