"""mtbert.toolkit.smalllinalg: the T x T solve the gradient methods use instead of torch.linalg's."""

from __future__ import annotations

import pytest
import torch

from mtbert.toolkit.smalllinalg import solve_spd


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
