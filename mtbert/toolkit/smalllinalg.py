"""Small linear algebra that never waits for the GPU.

``torch.linalg``'s solvers and decompositions check their results on the host
(a singular matrix, a decomposition that did not converge), so on CUDA each
call waits for everything queued before it: torch's sync debug mode stopped
Nash-MTL's step at ``torch.linalg.solve``, IMTL-G's at ``torch.linalg.pinv``
and Aligned-MTL's at ``torch.linalg.eigh`` on an H200 (2026-12-04,
benchmarks/results/h200/cuda_tests.log). The gradient methods solve T x T
problems every step, T the number of tasks; what is here does it with
elementwise and batched tensor operations in a fixed number of passes, with
no check a host must read.
"""

from __future__ import annotations

import torch
from torch import Tensor


def solve_spd(matrix: Tensor, rhs: Tensor) -> Tensor:
    """[B, T, T] symmetric positive-definite matrices and [B, T] right-hand sides -> [B, T] x
    with ``matrix @ x = rhs``.

    Gauss-Jordan elimination without pivoting, one pass per column (T passes, each a few
    batched operations). Without pivoting it is stable for symmetric positive-definite
    matrices: every pivot is the diagonal entry of a Schur complement, which stays positive.
    Nothing checks the pivots, so a singular or indefinite matrix gives inf or nan rather
    than an error: callers pass matrices that are positive definite by construction.
    """
    if matrix.dim() != 3 or matrix.shape[-1] != matrix.shape[-2] or rhs.shape != matrix.shape[:2]:
        raise ValueError(f"solve_spd takes [B, T, T] and [B, T]; got {tuple(matrix.shape)} and {tuple(rhs.shape)}")
    a, b = matrix.clone(), rhs.clone()
    count = a.shape[-1]
    for k in range(count):
        pivot = a[:, k, k : k + 1]  # [B, 1]
        row, value = a[:, k, :] / pivot, b[:, k : k + 1] / pivot  # row k scaled to a unit pivot
        factor = a[:, :, k].clone()  # [B, T]: what each row must lose of row k
        factor[:, k] = 0.0  # (a Python index: no read-back)
        a = a - factor.unsqueeze(-1) * row.unsqueeze(1)
        b = b - factor * value
        a[:, k, :] = row
        b[:, k : k + 1] = value
    return b
