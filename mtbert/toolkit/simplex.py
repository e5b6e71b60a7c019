"""Convex problems over the simplex of task weights, solved on the device in a fixed number of steps.

MGDA's min-norm point and CAGrad's dual are small convex problems over the
probability simplex of T task weights (T the number of tasks), one per block
of the shared parameters, every optimizer step. Frank-Wolfe, the papers'
solver, needs thousands of steps on the hard cases (gradient norms spread
over six orders of magnitude, nearly dependent gradients: 17% direction
error after 100 steps at T = 8), and a convergence test would read a value
back every step. What is here are primal-dual interior-point methods
(Nocedal & Wright, Numerical Optimization, 2nd ed., 16.6 and 19.3): each
iteration is one Newton step on the perturbed optimality conditions with the
complementarity target cut by a constant factor (CENTERING), so the duality
gap falls geometrically whatever the conditioning; a fixed number of
iterations reaches the exact solution to rounding level on every case family
of benchmarks/aggregator_accuracy.py. Each iteration is a few batched
T x T operations and one ``solve_spd``; nothing is read back.

Everything is float64. Callers pass Gram matrices divided by their trace
(``pertask.normalized``), so the constants here are relative.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtbert.toolkit.smalllinalg import solve_spd, symmetric_eigen

CENTERING = 0.1  # each step aims at a tenth of the current mean complementarity
TO_BOUNDARY = 0.99  # a step goes at most this fraction of the way to a bound
# complementarity is not pushed below this: beyond it the Newton systems' condition exceeds what
# float64 resolves, and the weights are already exact to ~1e-12 (they scale as its square root)
FLOOR = 1e-24


def largest_step(values: Tensor, steps: Tensor) -> Tensor:
    """[B, n], [B, n] -> [B]: TO_BOUNDARY times the largest t keeping values + t steps >= 0, at most 1."""
    ratio = torch.where(steps < 0, -values / torch.where(steps < 0, steps, -1.0), torch.inf)
    return (TO_BOUNDARY * ratio.amin(-1)).clamp(max=1.0)


def accept(step: Tensor, *directions: Tensor) -> tuple[Tensor, ...]:
    """The step length and directions, zeroed in any block where one of them is not finite (a
    system at the end of float64's range): that block keeps its last iterate instead of turning
    into NaN. Elementwise, nothing read back."""
    ok = torch.isfinite(step)
    for d in directions:
        ok = ok & torch.isfinite(d).reshape(len(d), -1).all(-1)
    return (torch.where(ok, step, 0.0),) + tuple(torch.where(ok.view(-1, *[1] * (d.dim() - 1)), d, 0.0)
                                                for d in directions)


def min_norm_weights(gram: Tensor, iterations: int = 40) -> Tensor:
    """[B, T, T] normalized Gram matrices -> [B, T] w on the simplex minimizing |sum_t w_t g_t|^2
    (MGDA's problem, the min-norm point of the gradients' convex hull).

    Primal-dual for min w^T G w / 2 s.t. sum(w) = 1, w >= 0 with multipliers nu (sum) and z (bounds):
    Newton on G w - nu 1 - z = 0, w z = sigma mu, with z eliminated: (G + Z/W) dw - 1 dnu = r, 1.dw =
    1 - 1.w. G may be singular (dependent gradients); G + Z/W + 1 1^T is positive definite (a null
    vector of G that sums to zero is one of Z/W's), so two solves with it give dw and dnu."""
    blocks, count, _ = gram.shape
    ones = gram.new_ones(blocks, count)
    w = ones / count
    z = ones.clone()
    nu = gram.new_zeros(blocks)
    for _ in range(iterations):
        target = (CENTERING * (w * z).mean(-1, keepdim=True)).clamp_min(FLOOR)
        residual = (gram @ w.unsqueeze(-1)).squeeze(-1) - nu[:, None] - z
        rhs = -residual - (w * z - target) / w
        infeasible = 1.0 - w.sum(-1)
        # a.dw = infeasible is known: adding a a^T dw to both sides keeps the system definite
        matrix = gram + torch.diag_embed(z / w) + 1.0
        p, q = solve_spd(matrix, torch.stack([rhs + infeasible[:, None], ones], -1)).unbind(-1)
        dnu = (infeasible - p.sum(-1)) / q.sum(-1)
        dw = p + dnu[:, None] * q
        dz = (target - w * z - z * dw) / w
        t, dw, dz, dnu = accept(torch.minimum(largest_step(w, dw), largest_step(z, dz)), dw, dz, dnu)
        w, z, nu = w + t[:, None] * dw, z + t[:, None] * dz, nu + t * dnu
    return w / w.sum(-1, keepdim=True)


def worst_case_weights(gram: Tensor, radius: Tensor, iterations: int = 30) -> Tensor:
    """[B, T, T] normalized Gram matrices, [B] radii r -> [B, T] w on the simplex minimizing
    g_w . g_0 + r |g_w| (CAGrad's dual; g_0 the mean gradient, g_w = sum_t w_t g_t).

    Solved as its primal, in the span of the gradients: with G = V diag(lambda) V^T and M = V
    diag(lambda)^(1/2) (rows: the gradients in orthonormal coordinates), maximize tau subject to
    c_t + r (M gamma)_t >= tau for every task (c_t = g_t . g_0) and |gamma| <= 1: a linear program
    with one ball constraint, smooth and well posed where the dual is not (its |g_w| has a kink where
    the gradients cancel). The multipliers of the T linear constraints are the dual's w (stationarity
    in tau makes them sum to 1). Eigenvalues below ``rank_tolerance`` are cut, so the coordinates of
    dependent gradients carry no rounding noise. Primal-dual on y = (gamma, tau): the Newton matrix
    zeta I + sum_t (w_t / s_t) a_t a_t^T + (zeta / s_b) gamma gamma^T (a_t = (r M_t, -1), s the
    slacks, zeta and s_b the ball's multiplier and slack) is positive definite."""
    from mtbert.toolkit.pertask import rank_tolerance
    blocks, count, _ = gram.shape
    lam, vectors = symmetric_eigen(gram)
    kept = lam > lam[:, -1:] * rank_tolerance(count)
    rows = vectors * torch.where(kept, lam.clamp_min(0).sqrt(), 0.0)[:, None, :]  # [B, T, T]: M
    c = gram.mean(-1)
    size = count + 1
    a = torch.cat([radius[:, None, None] * rows, -gram.new_ones(blocks, count, 1)], -1)  # [B, T, size]
    in_ball = torch.zeros(size, size, dtype=gram.dtype, device=gram.device)
    in_ball[:count, :count] = torch.eye(count, dtype=gram.dtype, device=gram.device)
    gamma, tau = gram.new_zeros(blocks, count), c.amin(-1) - 1.0  # strictly feasible: every slack >= 1
    w, zeta = gram.new_full((blocks, count), 1.0 / count), gram.new_ones(blocks)
    objective = torch.zeros(size, dtype=gram.dtype, device=gram.device)
    objective[count] = 1.0  # maximize tau: the gradient of -tau is -e_tau
    for _ in range(iterations):
        slack = c + radius[:, None] * (rows @ gamma.unsqueeze(-1)).squeeze(-1) - tau[:, None]
        ball = (1.0 - (gamma * gamma).sum(-1)) / 2
        target = (CENTERING * ((w * slack).sum(-1) + zeta * ball) / size).clamp_min(FLOOR)
        ball_grad = torch.cat([-gamma, gamma.new_zeros(blocks, 1)], -1)
        matrix = (zeta[:, None, None] * in_ball + torch.einsum("bt,bti,btj->bij", w / slack, a, a)
                  + (zeta / ball)[:, None, None] * ball_grad[:, :, None] * ball_grad[:, None, :])
        rhs = objective + torch.einsum("bt,bti->bi", target[:, None] / slack, a) + (target / ball)[:, None] * ball_grad
        dy = solve_spd(matrix, rhs)
        dslack = torch.einsum("bti,bi->bt", a, dy)
        dw = (target[:, None] - w * slack - w * dslack) / slack
        dzeta = (target - zeta * ball - zeta * (ball_grad * dy).sum(-1)) / ball
        dgamma = dy[:, :count]
        # the ball is not linear: its step limit is the root of |gamma + t dgamma|^2 = 1
        aa, bb, cc = (dgamma * dgamma).sum(-1), (gamma * dgamma).sum(-1), (gamma * gamma).sum(-1) - 1.0
        root = (-bb + (bb * bb - aa * cc).clamp_min(0).sqrt()) / torch.where(aa > 0, aa, 1.0)
        to_ball = torch.where(aa > 0, TO_BOUNDARY * root, torch.inf)
        t = torch.minimum(torch.minimum(largest_step(slack, dslack), to_ball),
                          torch.minimum(largest_step(w, dw), largest_step(zeta[:, None], dzeta[:, None])))
        t, dy, dw, dzeta = accept(t.clamp(max=1.0), dy, dw, dzeta)
        gamma, tau = gamma + t[:, None] * dy[:, :count], tau + t * dy[:, count]
        w, zeta = w + t[:, None] * dw, zeta + t * dzeta
    return w / w.sum(-1, keepdim=True)
