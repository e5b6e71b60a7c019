"""DB-MTL: the hand-computed first step, and the recurrence over several steps against a direct
transcription of the paper's formulas (LibMTL has no package to import here)."""

from __future__ import annotations

import torch

from helpers import aggregate, gradient_method


def test_first_step_by_hand(registry):
    """Step 1: rate 0.9, so h_t = 0.1 g_t / L_t: h_1 = (0.1, 0) (L_1 = 1), h_2 = (0, 0.3) (g_2 = (0, 6),
    L_2 = 2). Norms 0.1 and 0.3: scales 3 and 1, d = (0.3, 0.3)."""
    d = aggregate(gradient_method(registry, "db_mtl"), torch.tensor([[1.0, 0.0], [0.0, 6.0]]), [1.0, 2.0])
    torch.testing.assert_close(d, torch.tensor([0.3, 0.3]), atol=1e-5, rtol=0)


def test_steps_follow_the_recurrence(registry):
    g = torch.Generator().manual_seed(0)
    m = gradient_method(registry, "db_mtl", beta=0.8, sigma=0.5)
    h = torch.zeros(3, 7, dtype=torch.float64)
    for k in range(1, 8):
        grads = torch.randn(3, 7, generator=g, dtype=torch.float64)
        losses = (torch.rand(3, generator=g, dtype=torch.float64) + 0.1).tolist()
        d = aggregate(m, grads, losses)
        scaled = grads / torch.tensor(losses, dtype=torch.float64)[:, None]
        rate = 0.8 / k ** 0.5
        h = scaled + rate * (h - scaled)
        norms = h.norm(dim=1)
        expected = ((norms.max() / (norms + 1e-8))[:, None] * h).sum(0)
        torch.testing.assert_close(d, expected, atol=1e-5, rtol=1e-5)


def test_every_task_reaches_the_largest_norm(registry):
    grads = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 1.0]])
    m = gradient_method(registry, "db_mtl")
    d = aggregate(m, grads)
    # orthogonal rows: each coordinate of d is one task's scaled contribution, all of one size
    torch.testing.assert_close(d, torch.full((3,), 1.0), atol=1e-5, rtol=0)


def test_state_round_trips(registry):
    grads = torch.randn(2, 5, generator=torch.Generator().manual_seed(3))
    m = gradient_method(registry, "db_mtl")
    aggregate(m, grads)
    other = gradient_method(registry, "db_mtl")
    aggregate(other, 3 * grads)
    other.load_state_dict(m.state_dict())
    torch.testing.assert_close(aggregate(other, grads), aggregate(m, grads))
