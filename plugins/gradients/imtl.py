"""imtl: IMTL-G, the gradient half of Impartial Multi-Task Learning, Liu, Li, Kuang, Xue,
Chen, Yang, Liao & Zhang (2021), "Towards Impartial Multi-task Learning" (ICLR), eq. 8.

The update d = sum_t alpha_t g_t (sum_t alpha_t = 1) is chosen so that its
projections onto every task's unit gradient u_t = g_t / |g_t| are equal:
no task is favoured. The paper's closed form, alpha_{2..T} = g_1 U^T (D
U^T)^-1 with D and U the differences of the gradients and unit gradients to
the first task's, is, in terms of the Gram matrix G of the gradients,
alpha proportional to G^-1 |g| (then d . u_t = (G alpha)_t / |g_t| is the
same for every t); the pseudo-inverse covers linearly dependent gradients
(as torchjd's generalization does). Computed on the T x T Gram matrix per
block, on the device, on the Gram matrix divided by its trace (so the weights do
not depend on the gradients' scale). The pseudo-inverse comes from
``mtbert.toolkit.smalllinalg.symmetric_eigen`` (Jacobi rotations, a fixed
number of sweeps; ``torch.linalg.pinv`` checks its decomposition's
convergence on the host, which made every step wait for the GPU, seen on an
H200 under torch's sync debug mode). Its cut is the rows' precision, not
float64's: the Gram matrix is exact for the float32 rows, but the rows carry
float32 rounding, so an eigenvalue below ``pertask.rank_tolerance`` (T float32
epsilons of the largest gradient, squared) is a direction that rounding made,
and counts as zero. With float64's epsilon instead, g_2 = float32(1.7 g_1) gave
d = (0.630, -1.574, 2.519, 0.944) where torchjd gives (0.720, -1.801, 2.881,
1.081): the rounding's direction got a weight. ``granularity``: whole model, each layer or each
tensor. Needs every task in every step.

IMTL-L, the loss-scale half, is the ``imtl_l`` balancer; the paper's hybrid
(IMTL) is the two in one spec: ``balancer = "imtl_l"``, ``gradient = "imtl"``.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.toolkit.pertask import PerTaskGradients, normalized, rank_tolerance
from mtbert.toolkit.smalllinalg import symmetric_eigen


@attrs.frozen
class ImtlOptions:
    __retired_keys__ = {"seed": "the method draws nothing"}  # older specs gave it one

    granularity: Literal["model", "layer", "tensor"] = "model"


def impartial_weights(gram: Tensor) -> Tensor:
    """[B, T, T] Gram matrices -> [B, T] weights summing to 1 with equal projections on the unit
    gradients (all zero where pinv(G) |g| sums to zero, e.g. g_2 = -g_1: as torchjd)."""
    gram = normalized(gram)
    norms = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
    lam, vectors = symmetric_eigen(gram)
    # the pseudo-inverse: eigenvalues at or below the rows' precision count as zero
    kept = lam.abs() > lam.abs().amax(-1, keepdim=True) * rank_tolerance(gram.shape[-1])
    inverse = torch.where(kept, 1.0 / torch.where(kept, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    coordinates = (vectors.transpose(1, 2) @ norms.unsqueeze(-1)).squeeze(-1)  # |g| in the eigenbasis
    raw = (vectors @ (inverse * coordinates).unsqueeze(-1)).squeeze(-1)  # pinv(G) |g|
    total = raw.sum(-1, keepdim=True)
    # on a normalized G, |g| and pinv(G) are of order one: a sum below 1e-12 is one that cancels
    return torch.where(total.abs() < 1e-12, torch.zeros_like(raw), raw / torch.where(total.abs() < 1e-12, 1.0, total))


class Imtl(PerTaskGradients):
    """IMTL-G: the update whose projections on every task's unit gradient are equal."""

    statistic = "max_weight"  # the largest task weight, averaged over blocks

    def coefficients(self, gram: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        alpha = impartial_weights(gram.double())
        return torch.diag_embed(alpha), alpha.amax(-1).mean()


@hookimpl
def register_gradients(register):
    register("imtl", Imtl, options=ImtlOptions)
