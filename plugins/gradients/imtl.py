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
block, on the device. The pseudo-inverse comes from
``mtbert.toolkit.smalllinalg.symmetric_eigen`` (Jacobi rotations, a fixed
number of sweeps) with ``torch.linalg.pinv``'s default cut (T eps of the
largest eigenvalue): ``pinv`` itself checks its decomposition's convergence
on the host, which made every step wait for the GPU (seen on an H200 under
torch's sync debug mode). ``granularity``: whole model, each layer or each
tensor. Needs every task in every step.

IMTL-L, the loss-scale half, is the ``imtl_l`` balancer; the paper's hybrid
(IMTL) is the two in one spec: ``balancer = "imtl_l"``, ``gradient = "imtl"``.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from mtbert.hookspecs import hookimpl
from mtbert.structure import at_least
from mtbert.toolkit.pertask import PerTaskGradients
from mtbert.toolkit.smalllinalg import symmetric_eigen


@attrs.frozen
class ImtlOptions:
    granularity: Literal["model", "layer", "tensor"] = "model"
    seed: int = attrs.field(default=0, validator=at_least(0))  # unused: IMTL-G draws nothing (the helper asks)


def impartial_weights(gram: Tensor) -> Tensor:
    """[B, T, T] Gram matrices -> [B, T] weights summing to 1 with equal projections on the unit gradients."""
    norms = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
    lam, vectors = symmetric_eigen(gram)
    # the pseudo-inverse: eigenvalues at or below torch.linalg.pinv's default cut count as zero
    kept = lam.abs() > lam.abs().amax(-1, keepdim=True) * gram.shape[-1] * torch.finfo(gram.dtype).eps
    inverse = torch.where(kept, 1.0 / torch.where(kept, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    coordinates = (vectors.transpose(1, 2) @ norms.unsqueeze(-1)).squeeze(-1)  # |g| in the eigenbasis
    raw = (vectors @ (inverse * coordinates).unsqueeze(-1)).squeeze(-1)  # pinv(G) |g|
    total = raw.sum(-1, keepdim=True)
    return torch.where(total.abs() < 1e-12, torch.zeros_like(raw), raw / total)


class Imtl(PerTaskGradients):
    """IMTL-G: the update whose projections on every task's unit gradient are equal."""

    statistic = "max_weight"  # the largest task weight, averaged over blocks

    def coefficients(self, gram: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        alpha = impartial_weights(gram.double()).to(gram.dtype)  # pinv of a near-singular Gram wants float64
        return torch.diag_embed(alpha), alpha.amax(-1).mean()


@hookimpl
def register_gradient_methods(register):
    register("imtl", Imtl, config=ImtlOptions)
