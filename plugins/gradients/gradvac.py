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

from mtbert.gradsurgery import EPS, PerTaskGradients, rows
from mtbert.hookspecs import hookimpl
from mtbert.structure import at_least, in_range


@attrs.frozen
class GradVacOptions:
    beta: float = attrs.field(default=0.01, validator=in_range(0.0, 1.0))  # EMA rate of the targets
    granularity: Literal["model", "layer", "tensor"] = "model"
    seed: int = attrs.field(default=0, validator=at_least(0))  # of the random order of the other tasks


class GradVac(PerTaskGradients):
    """Raise each pair's gradient cosine to its running target."""

    def setup(self, shared, private, tasks) -> None:
        super().setup(shared, private, tasks)
        # phi_hat[i, j, b]: target cosine of task i's gradient with task j's, block b (positions in tasks)
        self.target = torch.zeros(len(self.tasks), len(self.tasks), self.num_blocks, device=self.buffer.device)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "target": self.target}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.target.copy_(state["target"])

    def adjust(self, G: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        count, beta = G.shape[0], self.options.beta
        norm = self.block_dot(G, G).sqrt()  # [T, B] |g_j| per block
        out = G.clone()
        fired = G.new_zeros(())
        for partner in self.partners(count):  # round k: every i against its own k-th partner
            pairs = [(present[i], present[j]) for i, j in enumerate(partner)]
            other, norm_j = rows(G, partner), rows(norm, partner)
            target = torch.stack([self.target[a, b] for a, b in pairs])
            norm_i = self.block_dot(out, out).sqrt()
            phi = (self.block_dot(out, other) / (norm_i * norm_j).clamp_min(EPS)).clamp(-1.0, 1.0)
            fire = (phi < target) & (norm_i > 0) & (norm_j > 0)
            sin_phi = (1 - phi * phi).clamp_min(0).sqrt()
            sin_target = (1 - target * target).clamp_min(1e-12).sqrt()
            coef = norm_i * (target * sin_phi - phi * sin_target) / (norm_j * sin_target).clamp_min(EPS)
            out += self.scale(torch.where(fire, coef, 0.0), other)
            updated = (1 - beta) * target + beta * phi
            for (a, b), value in zip(pairs, updated):
                self.target[a, b] = value
            fired += fire.sum()
        return out, fired / max(1, count * (count - 1) * self.num_blocks)


@hookimpl
def register_gradient_methods(register):
    register("gradvac", GradVac, config=GradVacOptions)
