"""pcgrad: Yu et al. (2020), "Gradient Surgery for Multi-Task Learning" (NeurIPS), Algorithm 1.

With g_1..g_T the step's per-task gradients of the shared parameters: for
each task i, g_i' starts as g_i; for each other task j, in a random order,
if g_i' . g_j < 0 (a conflict), g_i' <- g_i' - (g_i' . g_j / |g_j|^2) g_j,
projecting out the component that conflicts with the ORIGINAL g_j. The
update is sum_i g_i'. ``granularity`` applies this per block: the whole
model (the paper), each transformer layer, or each parameter tensor.

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
from mtbert.plugin.structure import at_least


@attrs.frozen
class PCGradOptions:
    granularity: Literal["model", "layer", "tensor"] = "model"
    seed: int = attrs.field(default=0, validator=at_least(0))  # of the random order of the other tasks


class PCGrad(PerTaskGradients):
    """Project each task's gradient off the others' where they conflict."""

    def coefficients(self, gram: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        count = gram.shape[1]
        coef = self.identity(gram)  # g_i' = g_i
        squared = gram.diagonal(dim1=1, dim2=2)  # [B, T] |g_j|^2
        tasks = torch.arange(count, device=gram.device)
        fired = gram.new_zeros(())
        for j in self.partners(count):  # round k: every i against its own k-th partner j
            dot = (coef * gram[:, j, :]).sum(-1)  # [B, T]: g_i' . g_j = sum_k a_ik (g_k . g_j)
            conflict = dot < 0
            step = torch.where(conflict, safe_divide(dot, squared[:, j]), 0.0)  # a zero g_j conflicts with nothing
            coef[:, tasks, j] -= step  # g_i' <- g_i' - (g_i' . g_j / |g_j|^2) g_j
            fired += conflict.sum()
        return coef, self.fired_fraction(fired, gram)


@hookimpl
def register_gradients(register):
    register("pcgrad", PCGrad, options=PCGradOptions)
