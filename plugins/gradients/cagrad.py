"""cagrad: Conflict-Averse Gradient descent, Liu, Liu, Jin, Stone & Liu (2021),
"Conflict-Averse Gradient Descent for Multi-task Learning" (NeurIPS), Algorithm 1.

With g_0 the mean of the step's task gradients of the shared parameters, the
update d maximizes the worst task's first-order improvement min_t g_t . d in
the ball |d - g_0| <= c |g_0|. Its dual is a problem over the simplex,

    w = argmin_{w in simplex}  g_w . g_0 + c |g_0| |g_w|,   g_w = sum_t w_t g_t,

and d = g_0 + (c |g_0| / |g_w|) g_w. c = 0 gives the mean gradient; large c
approaches MGDA. ``rescale`` is the official code's option: 0 keeps d, 1
(its default) divides by 1 + c^2, 2 by 1 + c. c = 0.4 is the paper's
setting for its multitask (NYU-v2, Cityscapes) experiments. The update has
the scale of the MEAN gradient (as the paper), not of the summed one.

The inner problem is convex in w and, like everything here, a function of
the T x T Gram matrix. The official code solves it with SciPy on the host;
earlier mtbert versions used 50 pairwise Frank-Wolfe steps, which stay 2e-2
from the solution when gradient norms spread from 1e-3 to 1e3. Here, on the
Gram matrix divided by its trace (so d(s G) = s d(G)): a primal-dual
interior-point method on the problem's primal form (``iterations`` steps,
default 30; ``mtbert.toolkit.simplex.worst_case_weights``), then 50 pairwise
Frank-Wolfe steps from its answer (each moves weight from the support's
worst vertex to the best one with the exact line search, which for this
objective has a closed form) to polish it to rounding level. Nothing is
read back. Within 1e-5 of a conic solver (cvxpy's Clarabel) on every case
family of benchmarks/aggregator_accuracy.py.

Where the gradients cancel, g_w = 0 (at the rows' float32 precision,
``pertask.rank_tolerance``), and d = g_0 + (c |g_0| / |g_w|) g_w is 0 / 0:
as the official code (whose c / (|g_w| + 1e-8) makes the second term
vanish), d = g_0, then ``rescale``. E.g. G = [[1,2,0,-1],[2,0,1,2],[-1,-2,0,1]]
at c = 0.4: w = (1/2, 0, 1/2), g_w = 0, d = g_0 = (2/3, 0, 1/3, 2/3) / 1.16.

``granularity`` solves one problem per block (whole model, each layer, each
tensor). Heads and task-specific adapters keep their own task's gradient.
Needs every task in every step (``sampler = "all_tasks"``).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.structure import at_least
from mtbert.toolkit.pertask import PerTaskGradients, normalized, rank_tolerance
from mtbert.toolkit.simplex import worst_case_weights

POLISH = 50  # pairwise Frank-Wolfe steps after the interior-point method
TINY = 1e-30  # guards of the line search, on normalized Gram matrices (entries of order one)


@attrs.frozen
class CAGradOptions:
    __retired_keys__ = {"seed": "the method draws nothing"}  # older specs gave it one

    c: float = attrs.field(default=0.4, validator=at_least(0.0))  # radius of the ball, in units of |g_0|
    rescale: Literal[0, 1, 2] = 1  # 0: d; 1: d / (1 + c^2); 2: d / (1 + c)  (the official code's option)
    iterations: int = attrs.field(default=30, validator=at_least(1))  # interior-point steps
    granularity: Literal["model", "layer", "tensor"] = "model"


def line_minimum(value_slope, q0, q1, q2, radius, limit):
    """argmin over gamma in [0, limit] of  value_slope * gamma + radius * sqrt(q0 + 2 q1 gamma + q2 gamma^2).

    The quadratic is |x + gamma D|^2 (q2 = |D|^2 >= 0). With y = q1 + q2 gamma it is
    y^2 / q2 + m, m = q0 - q1^2 / q2 >= 0 (the squared distance of the line from the origin),
    and the derivative slope + radius y / sqrt(y^2 / q2 + m) vanishes at
    y = -sign(slope) |slope| sqrt(m q2 / (radius^2 q2 - slope^2)) when |slope| < radius sqrt(q2);
    otherwise the function is monotone and the minimum is at an end. Convex, so clipping is exact."""
    q2s = q2.clamp_min(TINY)
    m = (q0 - q1 * q1 / q2s).clamp_min(0)
    gap = (radius * radius * q2 - value_slope * value_slope).clamp_min(TINY)
    y = -torch.sign(value_slope) * value_slope.abs() * (m * q2 / gap).sqrt()
    inside = ((y - q1) / q2s).clamp(min=torch.zeros_like(limit)).minimum(limit)
    monotone = torch.where(value_slope < 0, limit, torch.zeros_like(limit))
    gamma = torch.where(value_slope.abs() >= radius * q2.sqrt(), monotone, inside)
    return torch.where(q2 <= TINY, torch.zeros_like(limit), gamma)


def ball_radius(gram: Tensor, c: float) -> Tensor:
    """[B, T, T] Gram matrices -> [B]: c |g_0|, g_0 the mean gradient."""
    return c * gram.mean((-1, -2)).clamp_min(0).sqrt()


def conflict_averse_weights(gram: Tensor, c: float, iterations: int = 30, polish: int = POLISH) -> Tensor:
    """[B, T, T] Gram matrices -> [B, T] w on the simplex minimizing g_w . g_0 + c |g_0| |g_w|:
    the interior-point answer on the normalized Gram matrix, polished by pairwise Frank-Wolfe."""
    gram = normalized(gram)
    radius = ball_radius(gram, c)
    return pairwise_frank_wolfe(gram, radius, worst_case_weights(gram, radius, iterations), polish)


def pairwise_frank_wolfe(gram: Tensor, radius: Tensor, w: Tensor, iterations: int) -> Tensor:
    """``iterations`` pairwise Frank-Wolfe steps on the dual from ``w``: each moves weight from the
    support's worst vertex to the best one, with the exact line search (``line_minimum``)."""
    count = gram.shape[-1]
    u = gram.mean(-1)  # [B, T]: g_t . g_0
    for _ in range(iterations):
        gw = (gram @ w.unsqueeze(-1)).squeeze(-1)  # [B, T]: g_t . g_w
        norm = (w * gw).sum(-1).clamp_min(0).sqrt()  # |g_w|
        grad = u + radius[:, None] * gw / norm.clamp_min(TINY)[:, None]  # d objective / d w
        best = grad.argmin(-1)
        worst = torch.where(w > 0, grad, -torch.inf).argmax(-1)  # the support's worst vertex
        direction = F.one_hot(best, count).to(gram.dtype) - F.one_hot(worst, count).to(gram.dtype)
        limit = w.gather(-1, worst[:, None]).squeeze(-1)  # at most all of the worst vertex's weight
        g_dir = (gram @ direction.unsqueeze(-1)).squeeze(-1)
        q0, q1, q2 = norm * norm, (w * g_dir).sum(-1), (direction * g_dir).sum(-1)
        slope = (u * direction).sum(-1)
        gamma = line_minimum(slope, q0, q1, q2, radius, limit)
        w = (w + gamma[:, None] * direction).clamp_min(0)
    return w


class CAGrad(PerTaskGradients):
    """The direction that best improves the worst task near the mean gradient."""

    statistic = "max_weight"  # the largest weight of the dual problem, averaged over blocks

    def coefficients(self, gram: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        c, count = self.options.c, gram.shape[1]
        unit = normalized(gram.double())
        w = conflict_averse_weights(unit, c, self.options.iterations)
        radius = ball_radius(unit, c)
        squared_w = torch.einsum("bi,bij,bj->b", w, unit, w).clamp_min(0)  # |g_w|^2
        largest = unit.diagonal(dim1=1, dim2=2).amax(-1)
        cancelled = squared_w <= rank_tolerance(count) * largest  # g_w = 0: d = g_0, as the official code
        scale = torch.where(cancelled, 0.0, radius / torch.where(cancelled, 1.0, squared_w).sqrt())
        weights = 1.0 / count + scale[:, None] * w  # d = sum_t (1/T + c|g_0| w_t / |g_w|) g_t
        weights = weights / {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[self.options.rescale]
        return torch.diag_embed(weights), w.amax(-1).mean()


@hookimpl
def register_gradients(register):
    register("cagrad", CAGrad, options=CAGradOptions)
