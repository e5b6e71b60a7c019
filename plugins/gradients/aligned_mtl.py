"""aligned_mtl: Senushkin, Patakin, Kuznetsov & Konushin (2023), "Independent Component
Alignment for Multi-Task Learning" (CVPR), Algorithm 1.

The stability of a multitask step is judged by the condition number of the
gradient matrix G = [g_1 .. g_T]: dominating and conflicting gradients make
it large. Aligned-MTL replaces G by the closest matrix (in Frobenius norm)
whose singular values are all equal to G's smallest non-zero one, sigma_min:
its rows are orthogonal and of one length, so no task dominates. From the
Gram matrix M = G G^T = V diag(lambda) V^T,

    G_hat = sigma_min V diag(lambda)^(-1/2) V^T G,   sigma_min = sqrt(min lambda > 0),

and the update is G_hat^T w for the tasks' preference weights w (all 1 here,
as the paper's "pre-defined task weights"; the spec's task weights already
act through the balancer), i.e. sum_t alpha_t g_t with alpha = B w, B =
sigma_min V diag(lambda)^(-1/2) V^T. Eigenvalues below lambda_max T eps
(float32 eps, as the paper code) count as zero and are left out, by masking
instead of slicing so nothing is read back. ``scale = "min"`` is the paper's
sigma_min; "median" and "mean" are the variants of its code. The
eigendecomposition is ``mtbert.toolkit.smalllinalg.symmetric_eigen`` (Jacobi
rotations, a fixed number of sweeps): ``torch.linalg.eigh`` checks its
convergence on the host, which made every step wait for the GPU (seen on an
H200 under torch's sync debug mode).

``granularity``: whole model, each layer or each tensor. Heads and
task-specific adapters keep their own task's gradient. Needs every task in
every step (``sampler = "all_tasks"``).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.toolkit.pertask import PerTaskGradients, normalized
from mtbert.toolkit.smalllinalg import symmetric_eigen


@attrs.frozen
class AlignedMTLOptions:
    __retired_keys__ = {"seed": "the method draws nothing"}  # older specs gave it one

    scale: Literal["min", "median", "mean"] = "min"  # the common singular value: smallest, median or mean
    granularity: Literal["model", "layer", "tensor"] = "model"


def aligned_weights(gram: Tensor, scale: str = "min") -> Tensor:
    """[B, T, T] Gram matrices -> [B, T] alpha = B 1, B = s V diag(lambda)^(-1/2) V^T on the non-zero eigenvalues."""
    count = gram.shape[-1]
    gram = normalized(gram)  # alpha is a function of G's shape only: d(s G) = s d(G)
    lam, vectors = symmetric_eigen(gram)  # ascending; torch.linalg.eigh would wait for a GPU
    tol = lam[:, -1:] * count * torch.finfo(torch.float32).eps
    kept = lam > tol
    inv_sqrt = torch.where(kept, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
    if scale == "min":
        common = torch.where(kept, lam, torch.inf).amin(-1)
    elif scale == "mean":
        common = torch.where(kept, lam, 0.0).sum(-1) / kept.sum(-1).clamp_min(1)
    else:  # median of the kept ones (the lower middle for an even count, as torch.median)
        ranked = torch.where(kept, lam, torch.inf).sort(-1).values
        middle = ((kept.sum(-1) - 1).clamp_min(0) // 2)[:, None]
        common = ranked.gather(-1, middle).squeeze(-1)
    common = torch.where(kept.any(-1), common, torch.zeros_like(common))
    balance = common.clamp_min(0).sqrt()[:, None, None] * (vectors * inv_sqrt[:, None, :]) @ vectors.transpose(1, 2)
    return balance.sum(-1)  # B 1 (B is symmetric)


class AlignedMTL(PerTaskGradients):
    """Align the task gradients' principal components: equal singular values, no dominating task."""

    statistic = "max_weight"  # the largest alpha_t / sum(alpha), averaged over blocks

    def coefficients(self, gram: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        alpha = aligned_weights(gram.double(), self.options.scale)
        total = alpha.sum(-1, keepdim=True).abs()
        share = alpha / torch.where(total > 0, total, 1.0)
        return torch.diag_embed(alpha), share.amax(-1).mean()


@hookimpl
def register_gradients(register):
    register("aligned_mtl", AlignedMTL, options=AlignedMTLOptions)
