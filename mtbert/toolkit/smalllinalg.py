"""Small linear algebra that never waits for the GPU.

``torch.linalg``'s solvers and decompositions check their results on the host
(a singular matrix, a decomposition that did not converge), so on CUDA each
call waits for everything queued before it: torch's sync debug mode stopped
Nash-MTL's step at ``torch.linalg.solve``, IMTL-G's at ``torch.linalg.pinv``
and Aligned-MTL's at ``torch.linalg.eigh`` on an H200 (2026-12-04,
benchmarks/results/h200/cuda_tests.log). The gradient methods solve T x T
problems every step, T the number of tasks; what is here does it with
elementwise and batched tensor operations in a fixed number of passes, with
no check a host must read: ``solve_spd`` (Nash-MTL's Newton systems) and
``symmetric_eigen`` (Aligned-MTL's eigendecomposition, IMTL-G's
pseudo-inverse).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def solve_spd(matrix: Tensor, rhs: Tensor) -> Tensor:
    """[B, T, T] symmetric positive-definite matrices and [B, T] (or [B, T, K]) right-hand sides ->
    x of the same shape as ``rhs`` with ``matrix @ x = rhs``.

    Gauss-Jordan elimination without pivoting, one pass per column (T passes, each a few
    batched operations). Without pivoting it is stable for symmetric positive-definite
    matrices: every pivot is the diagonal entry of a Schur complement, which stays positive.
    Nothing checks the pivots, so a singular or indefinite matrix gives inf or nan rather
    than an error: callers pass matrices that are positive definite by construction.
    """
    single = rhs.dim() == 2
    if (matrix.dim() != 3 or matrix.shape[-1] != matrix.shape[-2] or rhs.shape[:2] != matrix.shape[:2]
            or rhs.dim() not in (2, 3)):
        raise ValueError(f"solve_spd takes [B, T, T] and [B, T] or [B, T, K]; got {tuple(matrix.shape)} "
                         f"and {tuple(rhs.shape)}")
    a, b = matrix.clone(), (rhs.unsqueeze(-1) if single else rhs).clone()
    count = a.shape[-1]
    for k in range(count):
        pivot = a[:, k, k : k + 1]  # [B, 1]
        row, value = a[:, k, :] / pivot, b[:, k, :] / pivot  # row k scaled to a unit pivot
        factor = a[:, :, k].clone()  # [B, T]: what each row must lose of row k
        factor[:, k] = 0.0  # (a Python index: no read-back)
        a = a - factor.unsqueeze(-1) * row.unsqueeze(1)
        b = b - factor.unsqueeze(-1) * value.unsqueeze(1)
        a[:, k, :] = row
        b[:, k, :] = value
    return b.squeeze(-1) if single else b


def _rounds(count: int) -> list[tuple[list[int], list[int]]]:
    """Every pair of ``count`` (even) indices once, in ``count - 1`` rounds of disjoint pairs
    (the round-robin tournament): each round's rotations commute, so one product applies them."""
    order = list(range(count))
    rounds = []
    for _ in range(count - 1):
        pairs = [tuple(sorted((order[i], order[count - 1 - i]))) for i in range(count // 2)]
        rounds.append(([p for p, _ in pairs], [q for _, q in pairs]))
        order = [order[0], order[-1], *order[1:-1]]
    return rounds


@functools.cache
def _round_indices(size: int, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """Each round's pair positions as index tensors on ``device``, made on the first call for a
    size and device: on a GPU that copy from host memory waits, so it must not recur every step."""
    return [(torch.tensor(p, device=device), torch.tensor(q, device=device)) for p, q in _rounds(size)]


def symmetric_eigen(matrix: Tensor, sweeps: int = 8) -> tuple[Tensor, Tensor]:
    """[B, T, T] symmetric matrices -> ([B, T] eigenvalues ascending, [B, T, T] eigenvectors
    as columns), like ``torch.linalg.eigh`` but with no convergence check to read.

    Cyclic Jacobi: each rotation zeroes one off-diagonal pair; a round applies T / 2 disjoint
    rotations as one orthogonal product, and a sweep's T - 1 rounds visit every pair. It
    converges quadratically once the off-diagonal part is small (Golub & Van Loan, Matrix
    Computations, 8.5); a fixed ``sweeps`` instead of a tolerance, so nothing is read back.
    Float64 Gram matrices of up to 16 tasks reach rounding level (1e-14 of their norm) after 5
    sweeps in our measurements; the default 8 leaves a margin (tests/plugins/test_smalllinalg.py holds
    it to torch.linalg.eigh). An odd T is padded with a zero row and column, which no rotation
    touches (its off-diagonal is zero). Each round is a few batched operations, so a sweep costs
    about 20 (T - 1) small kernels whatever the number of blocks B.
    """
    if matrix.dim() != 3 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"symmetric_eigen takes [B, T, T]; got {tuple(matrix.shape)}")
    blocks, count, _ = matrix.shape
    size = count + count % 2
    a = torch.zeros(blocks, size, size, dtype=matrix.dtype, device=matrix.device)
    a[:, :count, :count] = (matrix + matrix.transpose(1, 2)) / 2
    eye = torch.eye(size, dtype=matrix.dtype, device=matrix.device).expand(blocks, size, size)
    vectors = eye.clone()
    rounds = _round_indices(size, matrix.device) if size > 1 else []
    for _ in range(sweeps):
        for p, q in rounds:
            app, aqq, apq = a[:, p, p], a[:, q, q], a[:, p, q]
            # the rotation angle's tangent, in the form that never cancels (Golub & Van Loan 8.5.2)
            zeta = (aqq - app) / (2 * apq)
            sign = torch.where(zeta >= 0, 1.0, -1.0).to(a.dtype)
            tangent = sign / (zeta.abs() + torch.sqrt(1 + zeta * zeta))
            tangent = torch.where(apq == 0, torch.zeros_like(tangent), tangent)  # already diagonal: leave it
            cos = torch.rsqrt(1 + tangent * tangent)
            sin = tangent * cos
            rotation = eye.clone()
            rotation[:, p, p], rotation[:, q, q] = cos, cos
            rotation[:, p, q], rotation[:, q, p] = sin, -sin
            a = rotation.transpose(1, 2) @ a @ rotation
            vectors = vectors @ rotation
    values = a.diagonal(dim1=1, dim2=2)[:, :count]
    vectors = vectors[:, :count, :count]
    order = values.argsort(-1)
    return values.gather(-1, order), vectors.gather(-1, order.unsqueeze(1).expand(blocks, count, count))
