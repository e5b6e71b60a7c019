"""gradvac: Wang et al. (2021), "Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models" (ICLR), Algorithm 1.

PCGrad only acts when gradients conflict (cosine < 0). GradVac instead keeps,
per ordered task pair (i, j) and per block, an EMA target cosine phi_hat_ij
(starting at 0) and, for each task i and each other task j in a random order,
with phi = cos(g_i', g_j) (g_i' the adjusted gradient so far, g_j the
original): where phi < phi_hat_ij,

    g_i' <- g_i' + |g_i'| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
                   / (|g_j| sqrt(1 - phi_hat^2)) * g_j,

which makes cos(g_i', g_j) exactly phi_hat; then, fired or not,
phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi. The update is sum_i g_i'.
``granularity`` applies this per block (whole model, each transformer layer,
or each parameter tensor; the paper works per layer).

Only shared parameters are treated; heads and task-specific adapters keep
their own task's gradient. It needs every task in every step: use
sampler = "all_tasks" (validation refuses one-task-per-step samplers).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from mtbert.toolkit.pertask import PerTaskGradients, safe_divide
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.structure import at_least, in_range


@attrs.frozen
class GradVacOptions:
    beta: float = attrs.field(default=0.01, validator=in_range(0.0, 1.0))  # EMA rate of the targets
    granularity: Literal["model", "layer", "tensor"] = "model"
    seed: int = attrs.field(default=0, validator=at_least(0))  # of the random order of the other tasks


class GradVac(PerTaskGradients):
    """Raise each pair's gradient cosine to its running target."""

    def setup(self, shared, private, tasks, context=None) -> None:
        super().setup(shared, private, tasks, context)
        # phi_hat[i, j, b]: target cosine of task i's gradient with task j's, block b (positions in tasks)
        self.target = torch.zeros(len(self.tasks), len(self.tasks), self.num_blocks, device=self.buffer.device)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "target": self.target}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.target.copy_(state["target"])

    def coefficients(self, gram: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        count, beta = gram.shape[1], self.options.beta
        coef = self.identity(gram)  # g_i' = g_i
        norm = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()  # [B, T] |g_j|
        tasks = torch.arange(count, device=gram.device)
        first = self.index(present)  # each row's task, as a position in self.tasks (for the targets)
        fired = gram.new_zeros(())
        for j in self.partners(count):  # round k: every i against its own k-th partner j
            second = first[j]
            target = self.target[first, second].T  # [B, T]: phi_hat of each (i, j) pair
            dot = (coef * gram[:, j, :]).sum(-1)  # g_i' . g_j
            norm_i = torch.einsum("bik,bkl,bil->bi", coef, gram, coef).clamp_min(0).sqrt()  # |g_i'|
            norm_j = norm[:, j]
            phi = safe_divide(dot, norm_i * norm_j).clamp(-1.0, 1.0)
            fire = (phi < target) & (norm_i > 0) & (norm_j > 0)
            sin_phi = (1 - phi * phi).clamp_min(0).sqrt()
            sin_target = (1 - target * target).clamp_min(1e-12).sqrt()
            step = safe_divide(norm_i * (target * sin_phi - phi * sin_target), norm_j * sin_target)
            coef[:, tasks, j] += torch.where(fire, step, 0.0)
            self.target[first, second] = ((1 - beta) * target + beta * phi).T.to(self.target.dtype)
            fired += fire.sum()
        return coef, self.fired_fraction(fired, gram)


@hookimpl
def register_gradients(register):
    register("gradvac", GradVac, options=GradVacOptions)
