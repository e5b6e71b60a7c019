"""Aligned-MTL: hand cases, and torchjd's AlignedMTL as the outside oracle."""

from __future__ import annotations

import pytest
import torch

from mtbert_plugins.gradients.aligned_mtl import aligned_weights

from helpers import aggregate, gradient_method

AlignedMTL = pytest.importorskip("torchjd.aggregation").AlignedMTL


def test_hand_case_orthogonal_gradients(registry):
    """g1 = (2, 0), g2 = (0, 1): M = diag(4, 1), sigma_min = 1, B = diag(1/2, 1): both rows
    rescaled to the smallest singular value, d = (1, 1)."""
    d = aggregate(gradient_method(registry, "aligned_mtl"), torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0]), atol=1e-6, rtol=0)


def test_aligned_rows_are_orthogonal_and_of_one_length():
    """G_hat = B G has G_hat G_hat^T = sigma_min^2 I on full-rank gradients."""
    jac = torch.tensor([[1.0, 0.5, 0.0], [0.2, 1.0, -0.3], [0.0, -0.4, 2.0]], dtype=torch.float64)
    gram = jac @ jac.T
    lam, vec = torch.linalg.eigh(gram)
    balance = lam[0].sqrt() * vec @ torch.diag(lam.rsqrt()) @ vec.T
    aligned = balance @ jac
    torch.testing.assert_close(aligned @ aligned.T, lam[0] * torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(aligned_weights(gram[None])[0], balance.sum(1))


def test_rank_deficient_gradients_use_the_non_zero_eigenvalues(registry):
    """g2 = 2 g1: rank one; the kept eigenvalue is |g1|^2 + |g2|^2 = 5 |g1|^2."""
    grads = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    d = aggregate(gradient_method(registry, "aligned_mtl"), grads)
    assert torch.isfinite(d).all()
    # B = sqrt(5) v v^T / sqrt(5) = v v^T with v = (1, 2)/sqrt(5): alpha = B 1 = (3/5, 6/5); d = 3/5 + 12/5
    torch.testing.assert_close(d, torch.tensor([3.0, 0.0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale, theirs", [("min", "min"), ("median", "median"), ("mean", "rmse")])
@pytest.mark.parametrize("seed", range(20))
def test_matches_torchjd(registry, seed, scale, theirs):
    """torchjd weighs by the mean preference (1/T each), mtbert by 1 each: T times torchjd's."""
    g = torch.Generator().manual_seed(seed)
    tasks, size = 2 + seed % 5, 4 + seed % 9  # some with more tasks than coordinates: rank deficient
    jacobian = (torch.randn(tasks, size, generator=g) * torch.rand(tasks, 1, generator=g) * 3).double()
    expected = tasks * AlignedMTL(scale_mode=theirs)(jacobian)
    d = aggregate(gradient_method(registry, "aligned_mtl", scale=scale), jacobian.float()).double()
    torch.testing.assert_close(d, expected, atol=1e-4, rtol=1e-4)
