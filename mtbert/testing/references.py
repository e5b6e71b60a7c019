"""Exact float64 answers of the gradient methods, written for checking, not for speed.

Each function takes the task gradients as rows ([T, P]; float32 values are
read exactly in float64) and returns the method's update [P] in float64,
computed the plain way: faces enumerated for MGDA's min-norm point, a conic
solver (cvxpy's Clarabel, a test dependency) for CAGrad, an SVD for the
pseudo-inverses, the papers' loops written out for PCGrad, GradVac, DB-MTL
and GradDrop. The built-in methods are held to these in tests/ and in
benchmarks/aggregator_accuracy.py; a plugin author can hold theirs to them too.
Rank decisions use the precision the methods use (``pertask.rank_tolerance``).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from mtbert.toolkit.pertask import ROW_EPS, rank_tolerance


def gram(rows: Tensor) -> Tensor:
    rows = rows.double()
    return rows @ rows.T


def min_norm_point(rows: Tensor) -> Tensor:
    """The point of least norm in the convex hull of the rows, by trying every face: on each,
    the affine minimizer (least squares on the KKT system, so dependent rows are fine); the
    least norm among those that lie in the simplex is the answer. 2^T faces: for T up to ~12."""
    rows = rows.double()
    count = rows.shape[0]
    g = rows @ rows.T
    best, answer = None, None
    for size in range(1, count + 1):
        for face in itertools.combinations(range(count), size):
            face = list(face)
            kkt = torch.zeros(size + 1, size + 1, dtype=torch.float64)
            kkt[:size, :size] = g[face][:, face]
            kkt[:size, size] = kkt[size, :size] = 1.0
            rhs = torch.zeros(size + 1, 1, dtype=torch.float64)
            rhs[size] = 1.0
            w = torch.linalg.lstsq(kkt, rhs, driver="gelsd").solution[:size, 0]
            if abs(float(w.sum()) - 1) > 1e-9 or bool((w < -1e-12).any()):
                continue
            point = w @ rows[face]
            value = float(point @ point)
            if best is None or value < best:
                best, answer = value, point
    return answer


def mgda(rows: Tensor, normalization: str = "none", losses: Tensor | None = None) -> Tensor:
    """MGDA's update: the min-norm point of the (normalized) gradients, a combination of them."""
    rows = rows.double()
    norms = rows.norm(dim=1)
    norms = torch.where(norms > 0, norms, 1.0)
    losses = torch.ones(len(rows), dtype=torch.float64) if losses is None else losses.double()
    losses = torch.where(losses > 0, losses, 1.0)
    scale = {"none": torch.ones_like(norms), "l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    return min_norm_point(rows / scale[:, None])


def cagrad(rows: Tensor, c: float = 0.4, rescale: int = 1) -> Tensor:
    """CAGrad's update from cvxpy's solution of the dual; g_w = 0 (at the rows' precision) gives g_0,
    as the official code."""
    import cvxpy as cp
    import numpy as np

    rows = rows.double()
    count = rows.shape[0]
    array = rows.numpy()
    g0 = array.mean(0)
    radius = c * float(np.linalg.norm(g0))
    w = cp.Variable(count)
    problem = cp.Problem(cp.Minimize((array @ g0) @ w + radius * cp.norm(array.T @ w, 2)), [w >= 0, cp.sum(w) == 1])
    problem.solve(cp.CLARABEL, tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-14, max_iter=500)
    gw = torch.from_numpy(array.T @ w.value)
    largest = float(rows.norm(dim=1).max())
    d = torch.from_numpy(g0).clone()
    if float(gw.norm()) ** 2 > rank_tolerance(count) * largest ** 2:
        d = d + radius / gw.norm() * gw
    return d / {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]


def pseudo_inverse(matrix: Tensor) -> Tensor:
    """The pseudo-inverse of a symmetric PSD matrix, eigenvalues at or below ``rank_tolerance`` of the
    largest cut."""
    lam, vectors = torch.linalg.eigh(matrix)
    kept = lam > lam[-1] * rank_tolerance(len(lam))
    inverse = torch.where(kept, 1.0 / torch.where(kept, lam, 1.0), 0.0)
    return (vectors * inverse) @ vectors.T


def imtl(rows: Tensor) -> Tensor:
    """IMTL-G: alpha proportional to pinv(G) |g|, summing to 1 (zero if that sum cancels)."""
    rows = rows.double()
    g = gram(rows)
    g = g / g.trace() if g.trace() > 0 else g
    raw = pseudo_inverse(g) @ g.diagonal().clamp_min(0).sqrt()
    total = raw.sum()
    return (raw / total if abs(float(total)) >= 1e-12 else torch.zeros_like(raw)) @ rows


def aligned_mtl(rows: Tensor, scale: str = "min") -> Tensor:
    """Aligned-MTL: alpha = B 1, B = s V diag(lambda)^(-1/2) V^T on the eigenvalues above lambda_max T
    eps32 (the paper's cut), s the square root of the smallest (or median, or mean) of them."""
    rows = rows.double()
    g = gram(rows)
    lam, vectors = torch.linalg.eigh(g / g.trace() if g.trace() > 0 else g)
    kept = lam > lam[-1] * len(lam) * ROW_EPS
    if not bool(kept.any()):
        return torch.zeros(rows.shape[1], dtype=torch.float64)
    values = lam[kept]
    common = {"min": values.min(), "mean": values.mean(), "median": values.sort().values[(len(values) - 1) // 2]}[scale]
    inverse = torch.where(kept, torch.where(kept, lam, 1.0).rsqrt(), 0.0)
    balance = common.sqrt() * (vectors * inverse) @ vectors.T
    return balance.sum(1) @ rows


def pcgrad(rows: Tensor, partners: Tensor) -> Tensor:
    """PCGrad with the given order: ``partners[k, i]`` is task i's k-th partner."""
    rows = rows.double()
    total = torch.zeros(rows.shape[1], dtype=torch.float64)
    for i in range(len(rows)):
        g = rows[i].clone()
        for k in range(partners.shape[0]):
            other = rows[int(partners[k, i])]
            dot = g @ other
            if dot < 0 and other @ other > 0:
                g = g - dot / (other @ other) * other
        total += g
    return total


def gradvac(rows: Tensor, partners: Tensor, targets: Tensor | None = None) -> Tensor:
    """GradVac's first step from target cosines ``targets`` [T, T] (zero: what a run starts with)."""
    rows = rows.double()
    count = len(rows)
    targets = torch.zeros(count, count, dtype=torch.float64) if targets is None else targets.double()
    total = torch.zeros(rows.shape[1], dtype=torch.float64)
    for i in range(count):
        g = rows[i].clone()
        for k in range(partners.shape[0]):
            j = int(partners[k, i])
            other = rows[j]
            if g.norm() == 0 or other.norm() == 0:
                continue
            phi = min(1.0, max(-1.0, float((g @ other) / (g.norm() * other.norm()))))
            target = float(targets[i, j])
            if phi < target:
                sin_phi, sin_target = (1 - phi * phi) ** 0.5, max(1 - target * target, 1e-12) ** 0.5
                g = g + g.norm() * (target * sin_phi - phi * sin_target) / (other.norm() * sin_target) * other
        total += g
    return total


def db_mtl_first_step(rows: Tensor, losses: Tensor, beta: float = 0.9) -> Tensor:
    """DB-MTL's first update: h_t = (1 - beta) g_t / L_t, each scaled to the largest norm."""
    h = (1 - beta) * rows.double() / losses.double()[:, None]
    norms = h.norm(dim=1)
    scale = torch.where(norms > 0, norms.max() / torch.where(norms > 0, norms, 1.0), 0.0)
    return scale @ h


def graddrop(rows: Tensor, uniforms: Tensor, leak: float = 0.0) -> Tensor:
    """GradDrop with the given uniforms U [P]: keep the positive parts where the purity P > U, the
    negative ones where P < U."""
    rows = rows.double()
    total, magnitude = rows.sum(0), rows.abs().sum(0)
    purity = (1 + torch.where(magnitude > 0, total / torch.where(magnitude > 0, magnitude, 1.0), 0.0)) / 2
    u = uniforms.double()
    keep = ((purity > u)[None] & (rows > 0)) | ((purity < u)[None] & (rows < 0))
    return (leak + (1 - leak) * keep.double()) .mul(rows).sum(0)


def nash_error(rows: Tensor, alpha: Tensor) -> float:
    """Largest |alpha_t (G alpha)_t - 1| over the tasks with a non-zero gradient (Nash-MTL's equation)."""
    g = gram(rows)
    alpha = alpha.double()
    squared = g.diagonal()
    present = squared > squared.max() * rank_tolerance(len(squared))
    return float((alpha * (g @ alpha) - 1).abs()[present].max())
