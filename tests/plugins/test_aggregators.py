"""MGDA and IMTL-G: hand-computed cases, and torchjd's aggregators as the outside oracle.

torchjd (a test dependency) implements both on the Gram matrix of the task
gradients. Its MGDA is the paper's Frank-Wolfe, which stops short of the
min-norm point (ours is an interior-point solve, exact to rounding): so ours
must be at least as short as torchjd's answer, and close to it, and exactly
the min-norm point (tests/plugins/test_exact_methods.py holds it to the enumerated one).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchjd.aggregation import IMTLG, MGDA

from mtbert.model.build import make
from mtbert.plugin.interfaces import LoopContext
from mtbert.config.spec import structure_component
from mtbert_plugins.gradients.imtl import impartial_weights
from mtbert.toolkit.simplex import min_norm_weights

from helpers import aggregate, gradient_method


def method(registry, name, **options):
    return gradient_method(registry, name, **options)


def update(m, grads, losses_scale=None):
    return aggregate(m, grads, losses_scale)


def test_mgda_hand_case_two_gradients(registry):
    """|a g1 + (1 - a) g2|^2 = a^2 + 4 (1 - a)^2 is least at a = 0.8: d = (0.8, 0.4)."""
    d = update(method(registry, "mgda"), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    torch.testing.assert_close(d, torch.tensor([0.8, 0.4]), atol=1e-5, rtol=0)


def test_mgda_zero_at_a_pareto_stationary_point(registry):
    d = update(method(registry, "mgda"), torch.tensor([[1.0, 1.0], [-2.0, -2.0]]))
    assert d.norm() < 1e-5


@pytest.mark.parametrize("seed", range(40))
def test_mgda_is_no_longer_than_torchjds(registry, seed):
    """The min-norm point is the shortest point of the hull: never longer than torchjd's Frank-Wolfe
    answer (1000 steps), and within 1e-2 of the largest gradient of it."""
    g = torch.Generator().manual_seed(seed)
    tasks, size = 2 + seed % 4, 5 + seed % 17
    jacobian = torch.randn(tasks, size, generator=g) * torch.rand(tasks, 1, generator=g) * 3
    theirs = MGDA(epsilon=1e-30, max_iters=1000)(jacobian.double())
    d = update(method(registry, "mgda"), jacobian).double()
    assert float(d.norm()) <= float(theirs.norm()) * (1 + 1e-6) + 1e-7
    assert float((d - theirs).norm()) <= 1e-2 * float(jacobian.norm(dim=1).max())


def test_mgda_weights_are_the_min_norm_point(registry):
    """Against a dense search over the 2-simplex: nothing on the simplex has a smaller norm."""
    g = torch.tensor([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3], [0.1, -0.4, 1.0]])
    alpha = min_norm_weights((g @ g.T)[None], 500)[0]
    best = min((torch.tensor([a, b, 1 - a - b]) @ g).norm().item()
               for a in torch.linspace(0, 1, 201) for b in torch.linspace(0, 1, 201) if a + b <= 1)
    assert (alpha @ g).norm().item() <= best + 1e-3 and alpha.sum().item() == pytest.approx(1.0)


def test_mgda_normalizations(registry):
    grads = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    # l2: the unit gradients e1, e2 -> min-norm weights (1/2, 1/2) on them -> d = (0.5, 0.5)
    torch.testing.assert_close(update(method(registry, "mgda", normalization="l2"), grads),
                               torch.tensor([0.5, 0.5]), atol=1e-5, rtol=0)
    # loss: g / L with L = (3, 1) -> again e1 and e2
    torch.testing.assert_close(update(method(registry, "mgda", normalization="loss"), grads, [3.0, 1.0]),
                               torch.tensor([0.5, 0.5]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(40))
def test_imtl_matches_torchjd(registry, seed):
    g = torch.Generator().manual_seed(100 + seed)
    tasks, size = 2 + seed % 4, 6 + seed % 13
    jacobian = torch.randn(tasks, size, generator=g) * torch.rand(tasks, 1, generator=g) * 3
    expected = IMTLG()(jacobian.double()).float()
    d = update(method(registry, "imtl"), jacobian)
    torch.testing.assert_close(d, expected, atol=1e-4, rtol=1e-4)


def test_imtl_projections_on_unit_gradients_are_equal(registry):
    grads = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.5, 3.0]])
    d = update(method(registry, "imtl"), grads)
    projections = grads @ d / grads.norm(dim=1)
    torch.testing.assert_close(projections, projections[:1].expand(3), atol=1e-5, rtol=1e-5)
    alpha = impartial_weights((grads @ grads.T)[None].double())[0]
    assert alpha.sum().item() == pytest.approx(1.0)


def test_imtl_hand_case_orthogonal(registry):
    """Orthogonal g1 = (2, 0), g2 = (0, 1): equal projections need alpha proportional to 1/|g|, i.e.
    alpha = (1/3, 2/3) and d = (2/3, 2/3)."""
    d = update(method(registry, "imtl"), torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(d, torch.tensor([2 / 3, 2 / 3]), atol=1e-5, rtol=0)
    assert math.isclose(d @ torch.tensor([1.0, 0.0]), d @ torch.tensor([0.0, 1.0]), rel_tol=1e-5)
