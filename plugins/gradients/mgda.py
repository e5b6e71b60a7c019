"""mgda: the multiple-gradient descent algorithm for multitask learning, Sener & Koltun
(2018), "Multi-Task Learning as Multi-Objective Optimization" (NeurIPS), Algorithm 2.

The update is the min-norm point of the convex hull of the step's task
gradients of the shared parameters,

    d = sum_t alpha_t g_t,   alpha = argmin_{alpha in simplex} |sum_t alpha_t g_t|^2,

a direction that decreases no task's loss to first order when one exists
(d = 0 at a Pareto-stationary point). The paper solves it by Frank-Wolfe on
the T x T Gram matrix of the (normalized) gradients (Algorithm 2), 100 steps
in its code and torchjd's; that is far from the min-norm point on hard
cases (17% direction error at T = 8 on Gaussian gradients, more when norms
spread). Here the problem is solved exactly, on the Gram matrix divided by
its trace, by a primal-dual interior-point method with a fixed number of
``iterations`` (default 40) and no read-back
(``mtbert.toolkit.simplex.min_norm_weights``): within 1e-7 of the exact
min-norm point on every case family of benchmarks/aggregator_accuracy.py,
T up to 8, norms spread from 1e-3 to 1e3, dependent and zero gradients.

``normalization`` is the paper code's gradient normalization before the
solve: "none", "l2" (g_t / |g_t|), "loss" (g_t / L_t) or "loss+" (g_t /
(L_t |g_t|)); the update then combines the normalized gradients (a zero
gradient stays zero: it is normalized by 1). The update has the scale of one
task's gradient (the weights sum to 1), as in the paper: d(s G) = s d(G)
for "none" and "loss", and d(s G) = d(G) for "l2" and "loss+". ``granularity``
solves one problem per block (whole model, each layer, each tensor). Heads
and task-specific adapters keep their own task's gradient. Needs every task
in every step (``sampler = "all_tasks"``).

The paper's upper-bound form, MGDA-UB (the same problem on the gradients
with respect to the shared representation, one backward pass), is the
``mgda_ub`` plugin.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.structure import at_least
from mtbert.toolkit.pertask import PerTaskGradients, normalized
from mtbert.toolkit.simplex import min_norm_weights


@attrs.frozen
class MgdaOptions:
    __retired_keys__ = {"seed": "the method draws nothing"}  # older specs gave it one

    granularity: Literal["model", "layer", "tensor"] = "model"
    iterations: int = attrs.field(default=40, validator=at_least(1))  # interior-point steps
    normalization: Literal["none", "l2", "loss", "loss+"] = "none"


class Mgda(PerTaskGradients):
    """Step along the min-norm convex combination of the task gradients (MGDA)."""

    statistic = "max_weight"  # the largest task weight, averaged over blocks

    def __init__(self, options):
        super().__init__(options)
        self.tracks_losses = options.normalization in ("loss", "loss+")

    def coefficients(self, gram: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        scale = self.normalizers(gram, present)  # [B, T]: g_t is used as g_t / scale_t
        alpha = min_norm_weights(normalized(gram / (scale[:, :, None] * scale[:, None, :])), self.options.iterations)
        return torch.diag_embed(alpha / scale), alpha.amax(-1).mean()

    def normalizers(self, gram: Tensor, present: list[int]) -> Tensor:
        """[B, T] positive divisors of the gradients (1 for a zero norm or loss: that gradient stays as it is)."""
        norms = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
        norms = torch.where(norms > 0, norms, 1.0)
        kind = self.options.normalization
        if kind == "none":
            return torch.ones_like(norms)
        if kind == "l2":
            return norms
        losses = self.step_losses(present).to(gram.dtype)[None, :]
        losses = torch.where(losses > 0, losses, 1.0)
        return losses.expand_as(norms) if kind == "loss" else losses * norms


@hookimpl
def register_gradients(register):
    register("mgda", Mgda, options=MgdaOptions)
