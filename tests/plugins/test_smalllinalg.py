"""mtbert.toolkit.smalllinalg: the T x T solve and eigendecomposition the gradient methods use instead of torch.linalg's."""

from __future__ import annotations

import pytest
import torch

from mtbert.toolkit.smalllinalg import solve_spd, symmetric_eigen


def random_spd(blocks: int, size: int, condition: float, generator) -> torch.Tensor:
    """Symmetric positive-definite matrices with eigenvalues spread from 1 to ``condition``."""
    q, _ = torch.linalg.qr(torch.randn(blocks, size, size, generator=generator, dtype=torch.float64))
    eigenvalues = torch.logspace(0, torch.log10(torch.tensor(condition)).item(), size, dtype=torch.float64)
    return q @ torch.diag_embed(eigenvalues.expand(blocks, size)) @ q.transpose(1, 2)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 16])
@pytest.mark.parametrize("condition", [1.0, 1e3, 1e6])
def test_equals_torch_linalg_solve(size, condition):
    generator = torch.Generator().manual_seed(size)
    matrix = random_spd(7, size, condition, generator)
    rhs = torch.randn(7, size, generator=generator, dtype=torch.float64)
    ours = solve_spd(matrix, rhs)
    theirs = torch.linalg.solve(matrix, rhs.unsqueeze(-1)).squeeze(-1)
    # Gauss-Jordan's error grows with the condition number, as any solver's does
    assert torch.allclose(ours, theirs, rtol=1e-12 * condition, atol=1e-12 * condition)
    assert torch.allclose(matrix @ ours.unsqueeze(-1), rhs.unsqueeze(-1), atol=1e-9)


def test_hand_case():
    # [[4, 2], [2, 3]] x = [2, 1]: det 8, x = [3 * 2 - 2 * 1, 4 * 1 - 2 * 2] / 8 = [0.5, 0]
    x = solve_spd(torch.tensor([[[4.0, 2.0], [2.0, 3.0]]]), torch.tensor([[2.0, 1.0]]))
    assert torch.equal(x, torch.tensor([[0.5, 0.0]]))


def test_inputs_are_left_alone_and_float32_works():
    matrix = torch.tensor([[[2.0, 0.5], [0.5, 1.0]]])
    rhs = torch.tensor([[1.0, 1.0]])
    before = matrix.clone(), rhs.clone()
    x = solve_spd(matrix, rhs)
    assert x.dtype == torch.float32 and torch.equal(matrix, before[0]) and torch.equal(rhs, before[1])
    assert torch.allclose(matrix[0] @ x[0], rhs[0], atol=1e-6)


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\[B, T, T\] and \[B, T\]"):
        solve_spd(torch.eye(3), torch.ones(3))
    with pytest.raises(ValueError):
        solve_spd(torch.eye(3)[None], torch.ones(1, 2))


def gram_of(gradients: torch.Tensor) -> torch.Tensor:
    return gradients @ gradients.transpose(1, 2)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8, 16])
def test_symmetric_eigen_equals_torch_linalg_eigh(size):
    generator = torch.Generator().manual_seed(100 + size)
    scales = torch.logspace(0, 3, size, dtype=torch.float64)[None, :, None]  # gradients of unequal sizes
    matrix = gram_of(torch.randn(50, size, 40, generator=generator, dtype=torch.float64) * scales)
    values, vectors = symmetric_eigen(matrix)
    expected = torch.linalg.eigvalsh(matrix)
    norm = matrix.flatten(1).norm(dim=-1)[:, None]
    assert ((values - expected).abs() / norm).max() < 1e-13  # ascending, like eigh
    rebuilt = vectors @ torch.diag_embed(values) @ vectors.transpose(1, 2)
    assert ((rebuilt - matrix).flatten(1).norm(dim=-1) / norm[:, 0]).max() < 1e-13
    assert (vectors.transpose(1, 2) @ vectors - torch.eye(size, dtype=torch.float64)).abs().max() < 1e-13


def test_symmetric_eigen_on_degenerate_matrices():
    """Rank one (dependent gradients), a zero matrix, and repeated eigenvalues."""
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(1, 1, 30, generator=generator, dtype=torch.float64)
    rank_one = gram_of(direction * torch.tensor([[[1.0], [-2.0], [0.5]]], dtype=torch.float64))
    values, vectors = symmetric_eigen(torch.cat([rank_one, torch.zeros_like(rank_one),
                                                 torch.eye(3, dtype=torch.float64)[None] * 2]))
    assert torch.allclose(values[0], torch.tensor([0.0, 0.0, 5.25], dtype=torch.float64) * direction.square().sum(),
                          atol=1e-12)
    assert torch.equal(values[1], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(values[2], torch.full((3,), 2.0, dtype=torch.float64))
    assert (vectors.transpose(1, 2) @ vectors - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-14


def test_symmetric_eigen_hand_case():
    # [[2, 1], [1, 2]]: eigenvalues 1 and 3, eigenvectors (1, -1) and (1, 1) over sqrt(2)
    values, vectors = symmetric_eigen(torch.tensor([[[2.0, 1.0], [1.0, 2.0]]], dtype=torch.float64))
    assert torch.allclose(values, torch.tensor([[1.0, 3.0]], dtype=torch.float64))
    assert torch.allclose(vectors[0].abs(), torch.full((2, 2), 2 ** -0.5, dtype=torch.float64))
    assert vectors[0, 0, 0] * vectors[0, 1, 0] < 0 < vectors[0, 0, 1] * vectors[0, 1, 1]


def test_imtl_pseudo_inverse_equals_torch_linalg_pinv():
    """IMTL-G's weights from symmetric_eigen are those of torch.linalg.pinv, also for linearly
    dependent gradients (where the pseudo-inverse, not an inverse, decides them)."""
    from mtbert_plugins.gradients.imtl import impartial_weights

    def with_pinv(gram):
        norms = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
        raw = (torch.linalg.pinv(gram) @ norms.unsqueeze(-1)).squeeze(-1)
        return raw / raw.sum(-1, keepdim=True)

    generator = torch.Generator().manual_seed(7)
    full_rank = gram_of(torch.randn(40, 3, 25, generator=generator, dtype=torch.float64))
    base = torch.randn(40, 2, 25, generator=generator, dtype=torch.float64)  # the third a mix of two
    mix = torch.randn(40, 1, 2, generator=generator, dtype=torch.float64) @ base
    dependent = gram_of(torch.cat([base, mix], dim=1))
    for gram in (full_rank, dependent):
        assert torch.allclose(impartial_weights(gram), with_pinv(gram), rtol=1e-9, atol=1e-9)
