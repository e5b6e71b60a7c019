"""db_mtl: Dual-Balancing Multi-Task Learning, Lin, Ye, Xu, Shi, Zhang & Kwok (2023),
"Dual-Balancing Multi-Task Learning" (arXiv:2308.12029), Algorithm 1.

Two balancings in one method. Loss scale: each task is trained on log L_t,
whose gradient g_t / L_t does not depend on the loss's units. Gradient
magnitude: a running average of those gradients,

    h_t <- g_t / L_t + beta_k (h_t - g_t / L_t),   beta_k = beta / k^sigma  (k = the step, from 1),

and the update rescales every task's average to the largest norm among them,

    d = sum_t (max_s |h_s| / |h_t|) h_t,

so no task's gradient is smaller than any other's (a zero average stays
zero: it has no direction to scale up). beta = 0.9 and sigma =
0.5 are our defaults (LibMTL's implementation takes both as arguments; the
paper tunes beta). ``granularity`` takes the norms per block (whole model,
each layer, each tensor). With gradient accumulation, L_t is the step's mean
loss over its micro-batches (and over every process's shard).

Not a combination of the current gradients: it keeps h, one more float32
row per task of the shared parameters ([T, P], like the per-task buffer
itself), saved in the training state for ``--resume``. Heads and
task-specific adapters keep their own task's gradient (not divided by L_t).
The logged cosines (``gradient/cos/...``) are those of the running averages h.
Needs every task in every step (``sampler = "all_tasks"``).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.structure import at_least, in_range
from mtbert.toolkit.pertask import PerTaskGradients, safe_divide


@attrs.frozen
class DBMTLOptions:
    __retired_keys__ = {"seed": "the method draws nothing"}  # older specs gave it one

    beta: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0))  # running-average rate at step 1
    sigma: float = attrs.field(default=0.5, validator=at_least(0.0))  # decay of the rate: beta / k^sigma
    granularity: Literal["model", "layer", "tensor"] = "model"


class DBMTL(PerTaskGradients):
    """Log-loss gradients, averaged over steps, each scaled up to the largest norm."""

    statistic = "max_weight"  # the largest scale max_s |h_s| / |h_t|, averaged over blocks
    tracks_losses = True

    def setup(self, shared, private, tasks, context=None) -> None:
        super().setup(shared, private, tasks, context)
        self.average = torch.zeros_like(self.buffer)  # h: the running average of g_t / L_t, per task
        self.steps = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "average": self.average, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.average.copy_(state["average"])
        self.steps = int(state["steps"])

    def update(self, G: Tensor, present: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
        self.steps += 1
        rate = self.options.beta / self.steps ** self.options.sigma
        losses = self.step_losses(present).clamp_min(1e-8)
        for row, t in enumerate(present):  # h_t <- rate h_t + (1 - rate) g_t / L_t, in place
            self.average[t].mul_(rate).addcmul_(G[row], (1 - rate) / losses[row])  # no [P] temporary
        h = self.average if len(present) == len(self.tasks) else torch.stack([self.average[t] for t in present])
        gram = self.block_gram(h)
        norms = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()  # [B, T]
        # no + eps (LibMTL adds 1e-8): it shrank the update of blocks whose norm is below ~1e-6
        scale = safe_divide(norms.amax(-1, keepdim=True).expand_as(norms), norms)
        stats = self.cosines(gram.sum(0), [self.tasks[t] for t in present])  # of the running averages
        stats[self.statistic] = scale.amax(-1).mean()
        return self.mix(scale, h), stats


@hookimpl
def register_gradients(register):
    register("db_mtl", DBMTL, options=DBMTLOptions)
