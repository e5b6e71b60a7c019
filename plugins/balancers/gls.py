"""gls: the geometric loss strategy, Chennupati, Sistu, Yogamani & Rawashdeh (2019),
"MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for
Multi-Task Learning" (CVPR workshops), eq. 4.

The step trains on the geometric mean of its T task losses,

    L = (prod_t L_t)^(1/T),      dL/dL_t = L / (T L_t),

so a task's gradient is scaled by the inverse of its own loss: no task
dominates by the size of its loss, and there is nothing to tune. Written as
one term per task, w_t L_t with w_t = L / (T L_t) computed from detached
losses, so each task keeps its own autograd graph (what gradient methods
need) and the terms add up to L exactly. Spec weights act as exponents:
L = prod_t L_t^(w_t / sum w) (equal weights: the plain geometric mean).

Under torchrun each process sees a shard of the batch, and the geometric
mean is not linear in the shards' losses: the weights are computed from the
losses averaged across processes (one all-reduce of T numbers per
micro-batch, no read-back), so every rank uses the global batch's weights.
With ``train.accumulate`` > 1 each micro-batch is its own geometric mean.
Losses must be positive (cross-entropy, MSE); a loss at or below zero is
clamped to 1e-12 for the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Balancer


class Gls(Balancer):
    """Geometric loss strategy: the step trains on the geometric mean of its task losses."""

    def weigh(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        names = list(losses)
        values = torch.stack([losses[t].detach().float() for t in names])
        self.context.average([values])  # the global batch's losses (no-op in one process)
        values = values.clamp_min(1e-12)
        exponents = torch.stack([self.task_weights[self.names.index(t)] for t in names])
        exponents = exponents / exponents.sum()
        mean = torch.exp((exponents * values.log()).sum())
        weights = mean * exponents / values  # dL/dL_t
        return {t: losses[t] * weights[i] for i, t in enumerate(names)}


@hookimpl
def register_balancers(register):
    register("gls", Gls)
