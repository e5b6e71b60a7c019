"""CAGrad: hand-computed cases, and torchjd's CAGrad (a conic solver, cvxpy) as the outside oracle."""

from __future__ import annotations

import pytest
import torch

from mtbert_plugins.gradients.cagrad import conflict_averse_weights

from helpers import aggregate, gradient_method

torchjd_cagrad = pytest.importorskip("torchjd.aggregation").CAGrad
pytest.importorskip("cvxpy")


def test_c_zero_is_the_mean_gradient(registry):
    grads = torch.tensor([[1.0, 2.0, 0.0], [-3.0, 0.5, 1.0], [0.0, 0.0, 4.0]])
    d = aggregate(gradient_method(registry, "cagrad", c=0.0), grads)
    torch.testing.assert_close(d, grads.mean(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("rescale, divisor", [(0, 1.0), (1, 1.16), (2, 1.4)])
def test_hand_case_two_orthogonal_unit_gradients(registry, rescale, divisor):
    """g1 = e1, g2 = e2: by symmetry w = (1/2, 1/2), so g_w = g_0 = (1/2, 1/2) and
    d = g_0 + 0.4 |g_0| / |g_w| g_w = 1.4 g_0 = (0.7, 0.7), divided by 1, 1 + c^2 or 1 + c."""
    d = aggregate(gradient_method(registry, "cagrad", rescale=rescale), torch.eye(2))
    torch.testing.assert_close(d, torch.full((2,), 0.7 / divisor), atol=1e-6, rtol=0)


def test_the_worst_task_improves_more_than_along_the_mean(registry):
    """The point of the method: min_t g_t . d / |d| is larger than for the mean gradient."""
    grads = torch.tensor([[1.0, 0.0], [-0.8, 0.3]])
    d = aggregate(gradient_method(registry, "cagrad", c=0.9, rescale=0), grads)
    mean = grads.mean(0)
    assert (grads @ d).min() / d.norm() > (grads @ mean).min() / mean.norm() + 0.05


@pytest.mark.parametrize("seed", range(40))
def test_matches_torchjd(registry, seed):
    g = torch.Generator().manual_seed(seed)
    tasks, size = 2 + seed % 5, 5 + seed % 17
    jacobian = torch.randn(tasks, size, generator=g) * torch.rand(tasks, 1, generator=g) * 3
    expected = torchjd_cagrad(c=0.4, norm_eps=0.0)(jacobian.double()).float()
    d = aggregate(gradient_method(registry, "cagrad", rescale=0), jacobian)
    torch.testing.assert_close(d, expected, atol=5e-4, rtol=5e-4)


def test_weights_minimize_the_dual_objective():
    """Against a dense search over the 2-simplex."""
    jac = torch.tensor([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3], [0.1, -0.4, 1.0]], dtype=torch.float64)
    gram = jac @ jac.T
    radius = 0.4 * gram.mean().sqrt()

    def objective(w):
        return float(w @ gram.mean(1) + radius * (w @ gram @ w).sqrt())

    w = conflict_averse_weights(gram[None], 0.4, 50)[0]
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    best = min(objective(torch.stack([a, b, 1 - a - b])) for a in grid for b in grid if a + b <= 1)
    assert objective(w) <= best + 1e-9 and float(w.sum()) == pytest.approx(1.0) and (w >= 0).all()


def test_per_layer_blocks_are_solved_apart(registry):
    """granularity = "layer": two layers whose gradients are e1/e2 and (1,0)/(1,0) get their own
    solutions: (0.7, 0.7) in the first; where the tasks agree, every w gives g_w = g_0 = (1, 0), so
    d = (1 + c) g_0 = (1.4, 0)."""
    from torch import nn
    from mtbert.plugin.interfaces import LoopContext
    m = gradient_method(registry, "cagrad", granularity="layer", rescale=0)
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    m.setup([("layer.0.w", a), ("layer.1.w", b)], [], ["x", "y"], LoopContext())
    ga = torch.eye(2)
    gb = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    m.backward({t: (ga[i] * a).sum() + (gb[i] * b).sum() for i, t in enumerate(["x", "y"])})
    m.finish()
    torch.testing.assert_close(a.grad, torch.full((2,), 0.7), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.grad, torch.tensor([1.4, 0.0]), atol=1e-6, rtol=0)
