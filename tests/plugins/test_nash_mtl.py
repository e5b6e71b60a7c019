"""Nash-MTL: the bargaining equation G alpha = 1 / alpha, hand cases, and torchjd's NashMTL (cvxpy)."""

from __future__ import annotations

import warnings

import pytest
import torch

from mtbert_plugins.gradients.nash_mtl import bargaining_weights

from helpers import aggregate, gradient_method


def test_hand_case_orthogonal_gradients(registry):
    """G = diag(4, 1): alpha_t = 1 / |g_t| = (1/2, 1), so d = (1/2) (2, 0) + 1 (0, 1) = (1, 1)."""
    d = aggregate(gradient_method(registry, "nash_mtl"), torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(20))
def test_alpha_satisfies_its_equation(seed):
    g = torch.Generator().manual_seed(seed)
    tasks = 2 + seed % 7
    jac = torch.randn(tasks, 3 * tasks, generator=g, dtype=torch.float64) * torch.rand(tasks, 1, generator=g,
                                                                                       dtype=torch.float64) * 5
    gram = jac @ jac.T
    n = gram.norm()
    alpha = bargaining_weights((gram / n)[None], 20)[0] / n.sqrt()
    assert (alpha > 0).all()
    torch.testing.assert_close(alpha * (gram @ alpha), torch.ones(tasks, dtype=torch.float64), atol=1e-4, rtol=0)


def test_each_task_gets_the_inverse_weight_as_its_improvement(registry):
    """g_t . d = (G alpha)_t = 1 / alpha_t: the tasks' improvements multiply to the Nash product."""
    grads = torch.tensor([[1.0, 0.5, 0.0], [0.2, 1.0, -0.3], [0.0, -0.4, 2.0]], dtype=torch.float64)
    m = gradient_method(registry, "nash_mtl")
    d = aggregate(m, grads)
    alpha = m.alpha[0].double()
    torch.testing.assert_close(grads @ d, 1 / alpha, atol=1e-6, rtol=1e-6)


def test_update_every_reuses_the_weights_in_between(registry):
    m = gradient_method(registry, "nash_mtl", update_every=2)
    first = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    aggregate(m, first)  # step 1 solves: alpha = (1/2, 1)
    d = aggregate(m, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # step 2 reuses it
    torch.testing.assert_close(d, torch.tensor([0.5, 1.0]), atol=1e-6, rtol=0)
    d = aggregate(m, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # step 3 solves again: alpha = (1, 1)
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0]), atol=1e-6, rtol=0)


def test_state_round_trips(registry):
    m = gradient_method(registry, "nash_mtl", update_every=3)
    aggregate(m, torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    other = gradient_method(registry, "nash_mtl", update_every=3)
    aggregate(other, torch.tensor([[5.0, 0.0], [0.0, 5.0]]))
    other.load_state_dict(m.state_dict())
    probe = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(aggregate(other, probe), aggregate(m, probe))


@pytest.mark.parametrize("seed", range(30))
def test_matches_torchjd_where_its_solver_converged(registry, seed):
    """torchjd runs the official code's sequence of convex programs and stops once its residual
    |G alpha - 1/alpha| < 1e-3; where it got there, the two updates agree."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")
    g = torch.Generator().manual_seed(seed)
    tasks, size = 2 + seed % 5, 5 + seed % 17
    jac = (torch.randn(tasks, size, generator=g) * torch.rand(tasks, 1, generator=g) * 3).double()
    oracle = aggregation.NashMTL(n_tasks=tasks, max_norm=0.0, update_weights_every=1, optim_niter=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = oracle(jac)
    theirs = torch.from_numpy(oracle.weighting.prvs_alpha).double()
    gram = jac @ jac.T
    if (gram @ theirs - 1 / theirs).norm() > 1e-3 * (1 / theirs).norm():
        pytest.skip("torchjd's solver stopped before meeting the equation")
    d = aggregate(gradient_method(registry, "nash_mtl"), jac)
    torch.testing.assert_close(d, expected, atol=1e-3, rtol=1e-3)
