"""mgda: the multiple-gradient descent algorithm for multitask learning, Sener & Koltun
(2018), "Multi-Task Learning as Multi-Objective Optimization" (NeurIPS), Algorithm 2.

The update is the min-norm point of the convex hull of the step's task
gradients of the shared parameters,

    d = sum_t alpha_t g_t,   alpha = argmin_{alpha in simplex} |sum_t alpha_t g_t|^2,

a direction that decreases no task's loss to first order when one exists
(d = 0 at a Pareto-stationary point). Solved by Frank-Wolfe on the T x T
Gram matrix of the (normalized) gradients, as the paper's Algorithm 2: start
at alpha = 1/T; each iteration moves toward the vertex e_t with the least
(G alpha)_t by the exact line search gamma = (v.v - v.g_t) / |v - g_t|^2
(clipped to [0, 1]). Here it runs a fixed ``iterations`` (default 100,
torchjd's and the paper code's cap) with no early exit, so it stays on the
device with no read-back; once converged, further iterations move alpha by
gamma ~ 0.

``normalization`` is the paper code's gradient normalization before the
solve: "none", "l2" (g_t / |g_t|), "loss" (g_t / L_t) or "loss+" (g_t /
(L_t |g_t|)); the update then combines the normalized gradients. The update
has the scale of one task's gradient (the weights sum to 1), as in the
paper. ``granularity`` solves one problem per block (whole model, each
layer, each tensor). Heads and task-specific adapters keep their own task's
gradient. Needs every task in every step (``sampler = "all_tasks"``).

The paper's upper-bound form, MGDA-UB (the same problem on the gradients
with respect to the shared representation, one backward pass), is the
``mgda_ub`` plugin.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from mtbert.hookspecs import hookimpl
from mtbert.structure import at_least
from mtbert.toolkit.pertask import EPS, PerTaskGradients


@attrs.frozen
class MgdaOptions:
    granularity: Literal["model", "layer", "tensor"] = "model"
    iterations: int = attrs.field(default=100, validator=at_least(1))  # Frank-Wolfe steps
    normalization: Literal["none", "l2", "loss", "loss+"] = "none"
    seed: int = attrs.field(default=0, validator=at_least(0))  # unused: MGDA draws nothing (the helper asks)


def min_norm_weights(gram: Tensor, iterations: int) -> Tensor:
    """[B, T, T] Gram matrices -> [B, T] min-norm convex weights, by Frank-Wolfe (fixed iterations)."""
    blocks, count, _ = gram.shape
    alpha = gram.new_full((blocks, count), 1.0 / count)
    for _ in range(iterations):
        g_alpha = (gram @ alpha.unsqueeze(-1)).squeeze(-1)  # [B, T]: g_t . v
        vertex = F.one_hot(g_alpha.argmin(-1), count).to(gram.dtype)
        v_g = (vertex * g_alpha).sum(-1)  # v . g_t
        v_v = (alpha * g_alpha).sum(-1)  # v . v
        g_g = (vertex * (gram @ vertex.unsqueeze(-1)).squeeze(-1)).sum(-1)  # g_t . g_t
        gamma = ((v_v - v_g) / (v_v + g_g - 2 * v_g).clamp_min(EPS)).clamp(0.0, 1.0)
        gamma = torch.where(g_g <= v_g, 1.0, torch.where(v_v <= v_g, 0.0, gamma))
        alpha = (1 - gamma)[:, None] * alpha + gamma[:, None] * vertex
    return alpha


class Mgda(PerTaskGradients):
    """Step along the min-norm convex combination of the task gradients (MGDA)."""

    statistic = "max_weight"  # the largest task weight, averaged over blocks

    def __init__(self, options):
        super().__init__(options)
        self.tracks_losses = options.normalization in ("loss", "loss+")

    def coefficients(self, gram: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        scale = self.normalizers(gram, present)  # [B, T]: g_t is used as g_t / scale_t
        normalized = gram / (scale[:, :, None] * scale[:, None, :])
        alpha = min_norm_weights(normalized, self.options.iterations)
        return torch.diag_embed(alpha / scale), alpha.amax(-1).mean()

    def normalizers(self, gram: Tensor, present: list[int]) -> Tensor:
        norms = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt().clamp_min(EPS)
        kind = self.options.normalization
        if kind == "none":
            return torch.ones_like(norms)
        if kind == "l2":
            return norms
        losses = self.step_losses(present).clamp_min(EPS)[None, :]
        return losses.expand_as(norms) if kind == "loss" else losses * norms


@hookimpl
def register_gradient_methods(register):
    register("mgda", Mgda, config=MgdaOptions)
