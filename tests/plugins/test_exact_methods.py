"""The gradient methods on the hard cases, against exact float64 answers computed here.

The cases (mtbert.testing.cases): nearly parallel and nearly opposite gradients, one zero
gradient, norms spread from 1e-3 to 1e3, exactly and nearly dependent ones, T = 2..8. The
exact answers (mtbert.testing.references): MGDA's min-norm point by enumerating the faces of
the simplex, CAGrad's dual by cvxpy's conic solver, IMTL-G's and Aligned-MTL's by an
eigendecomposition in float64, PCGrad, GradVac, DB-MTL and GradDrop by their loops written
out. Then the properties every method must have on any finite input, at every granularity:
scale equivariance, finite answers, T = 1.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtbert.plugin.interfaces import LoopContext
from mtbert.testing import references
from mtbert.testing.cases import FAMILIES, case, nearly_opposite

from helpers import aggregate, gradient_method

SHAPES = [(tasks, size) for tasks in range(2, 9) for size in (10, 1000)]


def error(actual: torch.Tensor, exact: torch.Tensor, rows: torch.Tensor) -> float:
    """|d - d*| / |d*|, or over 1e-3 of the largest gradient where d* is smaller than that (a
    Pareto-stationary d* = 0 has no relative error). The update is combined from the float32 rows
    in float32, so where it is 1e-3 of the gradients, rounding alone is ~1e-4 of it: the tests
    hold the methods to 1e-4 (the issue asked for 1e-3)."""
    floor = 1e-3 * float(rows.double().norm(dim=1).max())
    return float((actual.double() - exact).norm()) / max(float(exact.norm()), floor, 1e-300)


def worst_error(registry, method: str, family: str) -> float:
    """The largest ``error`` of ``method`` against its exact reference over every shape of ``family``."""
    worst = 0.0
    for tasks, size in SHAPES:
        rows = case(family, tasks, size, seed=tasks)
        worst = max(worst, error(aggregate(gradient_method(registry, method), rows),
                                 getattr(references, method)(rows), rows))
    return worst


# -- MGDA: within 1e-3 of the exact min-norm point on every family -------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_mgda_is_the_exact_min_norm_point(registry, family):
    worst = worst_error(registry, "mgda", family)
    assert worst < 1e-4, worst  # Frank-Wolfe's 100 steps: 17% at T = 8 on "well"


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_mgda_normalizations_are_exact(registry, normalization):
    losses = [0.5, 2.0, 1.5, 0.25]
    for family in ("well", "spread", "nearly_dependent"):
        rows = case(family, 4, 50, seed=3)
        d = aggregate(gradient_method(registry, "mgda", normalization=normalization), rows, losses)
        exact = references.mgda(rows, normalization, torch.tensor(losses))
        assert error(d, exact, rows) < 1e-4


# -- CAGrad --------------------------------------------------------------------------------------

def test_cagrad_cancelling_gradients_give_the_mean_gradient(registry):
    """The dual's solution w = (1/2, 0, 1/2) makes g_w = 0; the official code (and now mtbert)
    answers g_0 = (2/3, 0, 1/3, 2/3). Before: row weights of 2e29 and d = (0, 0, 0.333, 0)."""
    rows = torch.tensor([[1.0, 2, 0, -1], [2, 0, 1, 2], [-1, -2, 0, 1]])
    g0 = torch.tensor([2 / 3, 0, 1 / 3, 2 / 3])
    torch.testing.assert_close(aggregate(gradient_method(registry, "cagrad", rescale=0), rows), g0)
    torch.testing.assert_close(aggregate(gradient_method(registry, "cagrad"), rows), g0 / 1.16)


@pytest.mark.parametrize("scale", [1e-12, 1e-8, 1.0, 1e8, 1e12])
def test_cagrad_is_scale_equivariant(registry, scale):
    """G = s [[1, 0, 0], [-0.5, 1, 0]]: d / s was (0.3764, 0.6845) at s = 1e-8 against (0.4256,
    0.6384) at s = 1 (absolute guards on fourth powers of the gradients)."""
    rows = torch.tensor([[1.0, 0, 0], [-0.5, 1, 0]], dtype=torch.float64)
    exact = references.cagrad(rows, rescale=0)
    d = aggregate(gradient_method(registry, "cagrad", rescale=0), (rows * scale).float())
    torch.testing.assert_close(d.double() / scale, exact, rtol=1e-5, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_cagrad_matches_a_conic_solver(registry, family):
    pytest.importorskip("cvxpy")
    worst = worst_error(registry, "cagrad", family)
    assert worst < 1e-4, worst  # 50 pairwise Frank-Wolfe steps: 2e-2 on "spread"


# -- IMTL-G --------------------------------------------------------------------------------------

def test_imtl_dependent_float32_gradients_count_as_dependent(registry):
    """g_2 = float32(1.7 g_1): rounding gives g_2 a tiny independent part, which the pseudo-inverse
    must cut at the rows' precision. torchjd: (0.720, -1.801, 2.881, 1.081) = (1 + 1.7^2) / 2.7 g_1;
    cutting at float64's epsilon gave (0.630, -1.574, 2.519, 0.944)."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    g1 = torch.tensor([0.5, -1.25, 2.0, 0.75])
    rows = torch.stack([g1, (1.7 * g1.double()).float()])
    d = aggregate(gradient_method(registry, "imtl"), rows)
    torch.testing.assert_close(d, (1 + 1.7 ** 2) / 2.7 * g1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d, aggregation.IMTLG()(rows), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d, torch.tensor([0.720, -1.801, 2.881, 1.081]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_imtl_matches_the_exact_pseudo_inverse(registry, family):
    worst = worst_error(registry, "imtl", family)
    assert worst < 1e-4, worst


# -- Nash-MTL ------------------------------------------------------------------------------------

def nash(registry, rows, **options):
    m = gradient_method(registry, "nash_mtl", **options)
    d = aggregate(m, rows)
    return d, m.alpha[0]


@pytest.mark.parametrize("theta", [1e-2, 3e-3, 1e-3, 1e-4])
def test_nash_solves_its_equation_on_nearly_opposite_gradients(registry, theta):
    """|g_1| = 1, |g_2| = 2 at the angle pi - theta: 20 damped Newton steps left the equation
    unmet by 37% at theta = 1e-3. Now alpha_t (G alpha)_t = 1 to 1e-6, and |d|^2 = T."""
    rows = nearly_opposite(theta)
    d, alpha = nash(registry, rows)
    assert references.nash_error(rows, alpha) < 1e-6
    assert float(d.double().norm()) == pytest.approx(math.sqrt(2), rel=1e-5)


@pytest.mark.parametrize("iterations", [20, 55, 200])
def test_nash_without_a_solution_is_zero_and_finite(registry, iterations):
    """g_2 = -2 g_1: no alpha > 0 solves the equation (the step is Pareto-stationary). The answer is
    d = 0 whatever the iteration count (it was NaN from 55 iterations on, and up to 0.7 max|g| before)."""
    g1 = torch.tensor([0.3, -1.0, 0.5])
    d, alpha = nash(registry, torch.stack([g1, -2 * g1]), iterations=iterations)
    assert torch.equal(d, torch.zeros(3)) and torch.equal(alpha, torch.zeros(2, dtype=alpha.dtype))


def test_nash_leaves_out_a_zero_gradient(registry):
    """A task with a zero gradient has nothing to bargain for: alpha_t = 0, the others solve theirs."""
    rows = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    d, alpha = nash(registry, rows)
    torch.testing.assert_close(alpha.float(), torch.tensor([0.5, 0.0, 1.0]))
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("family", ["well", "parallel", "spread", "nearly_dependent", "opposite"])
def test_nash_equation_holds_where_a_solution_exists(registry, family):
    """Where the min-norm point of the gradients is further from 0 than twice the rows' rounding
    (so a solution exists and is determined by the float32 values), the equation holds to 1e-4;
    elsewhere the answer is exactly 0."""
    for tasks, size in SHAPES:
        rows = case(family, tasks, size, seed=tasks)
        d, alpha = nash(registry, rows)
        assert torch.isfinite(d).all()
        distance = float(references.min_norm_point(rows).norm()) / float(rows.double().norm(dim=1).max())
        if distance > 2 * tasks * torch.finfo(torch.float32).eps:
            assert references.nash_error(rows, alpha) < 1e-4, (tasks, size, distance)
        elif not bool((alpha > 0).any()):
            assert torch.equal(d, torch.zeros_like(d))


# -- Aligned-MTL, PCGrad, GradVac, DB-MTL, GradDrop ---------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_aligned_mtl_matches_the_exact_eigendecomposition(registry, family):
    for tasks, size in SHAPES:
        rows = case(family, tasks, size, seed=tasks)
        d = aggregate(gradient_method(registry, "aligned_mtl"), rows)
        assert error(d, references.aligned_mtl(rows), rows) < 1e-4


def drawn_partners(method, rows):
    """The method's update and the partner order it drew (replayed from its generator's state)."""
    state = method.generator.get_state() if hasattr(method, "generator") else None
    d = aggregate(method, rows)
    method.generator.set_state(state)
    return d, method.partners(len(rows))


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
@pytest.mark.parametrize("family", FAMILIES)
def test_surgery_matches_its_loop_written_out(registry, name, family):
    for tasks, size in SHAPES:
        rows = case(family, tasks, size, seed=tasks)
        m = gradient_method(registry, name)
        m.setup([("encoder.w", nn.Parameter(torch.zeros(size)))], [], [f"t{i}" for i in range(tasks)], LoopContext())
        m.test_parameter = m.params[0]
        d, partners = drawn_partners(m, rows)
        exact = getattr(references, name)(rows, partners)
        assert error(d, exact, rows) < 1e-3  # T float32 roundings of |g| in an answer of 1e-3 |g|


@pytest.mark.parametrize("family", FAMILIES)
def test_db_mtl_first_step_is_exact(registry, family):
    losses = torch.tensor([0.7, 1.3, 2.0, 0.4, 1.0, 3.0, 0.9, 1.1])
    for tasks, size in SHAPES:
        rows = case(family, tasks, size, seed=tasks)
        d = aggregate(gradient_method(registry, "db_mtl"), rows, losses[:tasks].tolist())
        assert error(d, references.db_mtl_first_step(rows, losses[:tasks]), rows) < 1e-4


def test_db_mtl_small_blocks_are_not_shrunk(registry):
    """LibMTL's + 1e-8 in max|h| / (|h_t| + 1e-8) cut blocks of norm 1e-8 to 0.31 of their update."""
    rows = torch.tensor([[3e-9, 0.0], [0.0, 1e-9]])
    d = aggregate(gradient_method(registry, "db_mtl"), rows)
    exact = references.db_mtl_first_step(rows, torch.ones(2))
    torch.testing.assert_close(d.double(), exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_graddrop_matches_its_rule_with_the_same_draws(registry, family):
    from mtbert_plugins.gradients.graddrop import signed_draws
    for tasks, size in SHAPES:
        rows = case(family, tasks, size, seed=tasks)
        m = gradient_method(registry, "graddrop", seed=tasks)
        m.setup([("encoder.w", nn.Parameter(torch.zeros(size)))], [], [f"t{i}" for i in range(tasks)], LoopContext())
        m.test_parameter = m.params[0]
        state = m.draws.get_state()
        d = aggregate(m, rows)
        replay = torch.Generator().manual_seed(0)
        replay.set_state(state)
        uniforms = (signed_draws(torch.empty_like(m.bits), replay)[:size].double() * 2.0 ** -31 + 1) / 2
        assert error(d, references.graddrop(rows, uniforms), rows) < 1e-4


# -- properties of every method, at every granularity ----------------------------------------------

METHODS = {  # name -> (options, degree k of d(s G) = s^k d(G))
    "sum": ({}, 1), "pcgrad": ({}, 1), "gradvac": ({}, 1), "mgda": ({}, 1),
    "mgda_l2": ({"name": "mgda", "normalization": "l2"}, 0), "imtl": ({}, 1), "cagrad": ({}, 1),
    "nash_mtl": ({}, 0), "aligned_mtl": ({}, 1), "db_mtl": ({}, 1), "graddrop": ({}, 1),
}
GRANULAR = {"pcgrad", "gradvac", "mgda", "mgda_l2", "imtl", "cagrad", "nash_mtl", "aligned_mtl", "db_mtl"}
NAMES = [("encoder.embeddings.word", 7), ("encoder.layer.0.w", 5), ("encoder.layer.0.b", 3),
         ("encoder.layer.1.w", 6)]


def blocked_update(registry, key, rows, granularity):
    """The method's update of four named parameters (two layers and the embeddings) whose task
    gradients are ``rows`` [T, 21] cut into the four pieces."""
    options, _ = METHODS[key]
    options = dict(options)
    name = options.pop("name", key)
    if key in GRANULAR:
        options["granularity"] = granularity
    m = gradient_method(registry, name, **options)
    shared = [(n, nn.Parameter(torch.zeros(size))) for n, size in NAMES]
    tasks = [f"t{i}" for i in range(len(rows))]
    if name != "sum":
        m.setup(shared, [], tasks, LoopContext())
    pieces = rows.split([size for _, size in NAMES], dim=1)
    linear = {t: sum((pieces[k][i] * p).sum() for k, (_, p) in enumerate(shared)) for i, t in enumerate(tasks)}
    losses = {t: value - value.detach() + 1.0 for t, value in linear.items()}  # value 1 (DB-MTL divides by it)
    m.backward(losses)
    m.finish()
    return torch.cat([p.grad if p.grad is not None else torch.zeros_like(p) for _, p in shared])


PROPERTY_CASES = [(family, tasks, seed) for family in FAMILIES for tasks in (2, 3, 5) for seed in range(2)]


@pytest.mark.parametrize("granularity", ["model", "layer", "tensor"])
@pytest.mark.parametrize("key", list(METHODS))
def test_scale_equivariance_and_finite_answers(registry, key, granularity):
    """d(s G) = s^k d(G) for s from 2^-53 (1.1e-16: absolute guards made PCGrad and GradVac 13-22% off
    there, MGDA up to 220%) to 2^60 (1.2e18) (k = 1, or 0 for the methods whose update is
    normalized), to 1e-5 of the largest answer (powers of two scale float32 rows exactly, so what
    differs is the method's arithmetic, not the rounding of the inputs); and finite answers from
    finite gradients, also at 2^64 (1.8e19: the float32 Gram matrix overflowed at 1e19)."""
    degree = METHODS[key][1]
    # CAGrad's interior-point solve costs 8 s a granularity over every case: one seed of each for it
    cases = [c for c in PROPERTY_CASES if key != "cagrad" or c[2] == 0]
    for family, tasks, seed in cases:
        rows = case(family, tasks, 21, seed).double()
        base = blocked_update(registry, key, rows.float(), granularity).double()
        floor = 1e-6 * float(rows.abs().max()) ** degree  # where the answer is 0
        for s in (2.0 ** -53, 2.0 ** -40, 2.0 ** 40, 2.0 ** 60):
            scaled = blocked_update(registry, key, (rows * s).float(), granularity).double()
            tolerance = 1e-5 * max(float(base.abs().max()), floor)
            assert float((scaled / s ** degree - base).abs().max()) <= tolerance, (family, tasks, seed, s)
        assert torch.isfinite(blocked_update(registry, key, (rows * 2.0 ** 64).float(), granularity)).all()


@pytest.mark.parametrize("granularity", ["model", "layer", "tensor"])
@pytest.mark.parametrize("key", list(METHODS))
def test_one_task_is_its_own_gradient_direction(registry, key, granularity):
    """T = 1: every method's update points along the single gradient (positively), finite."""
    rows = case("well", 1, 21, 0)
    d = blocked_update(registry, key, rows, granularity)
    assert torch.isfinite(d).all()
    if granularity == "model":
        cosine = float(d.double() @ rows[0].double() / (d.double().norm() * rows[0].double().norm()))
        assert cosine == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("key", list(METHODS))
def test_dependent_opposite_and_zero_gradients_give_finite_answers(registry, key):
    g = torch.tensor([0.3, -1.0, 0.5, 2.0, 0.0, 1.0, -0.25] * 3)
    for rows in (torch.stack([g, g]), torch.stack([g, -g]), torch.stack([g, -2 * g, 4 * g]),
                 torch.stack([g, torch.zeros_like(g)]), torch.zeros(3, 21)):
        for granularity in ("model", "layer", "tensor"):
            assert torch.isfinite(blocked_update(registry, key, rows, granularity)).all(), (rows, granularity)


@pytest.mark.parametrize("key", sorted(GRANULAR))
def test_each_block_is_solved_as_its_own_problem(registry, key):
    """At granularity "tensor", each parameter's update is the method's answer for that parameter's
    gradients alone (here with every piece a different case family)."""
    if key in ("pcgrad", "gradvac"):
        pytest.skip("their random order differs between one call and four; test_gradients covers them")
    pieces = [case(f, 3, size, 5) for f, (_, size) in zip(("spread", "opposite", "nearly_dependent", "well"), NAMES)]
    whole = blocked_update(registry, key, torch.cat(pieces, dim=1), "tensor")
    alone = []
    for piece in pieces:
        options = dict(METHODS[key][0])
        m = gradient_method(registry, options.pop("name", key), **options)
        alone.append(aggregate(m, piece))
    torch.testing.assert_close(whole, torch.cat(alone), rtol=1e-5, atol=1e-6)


def test_mgda_ub_weights_are_scale_free_and_finite():
    """MGDA-UB's closed form, 1 / d_t normalised: the same for s^2 d at any scale, a zero norm
    taking all the weight (and sharing it with other zeros)."""
    from mtbert_plugins.gradients.mgda_ub import orthogonal_min_norm_weights
    squared = torch.tensor([0.25, 4.0, 1.0], dtype=torch.float64)
    base = orthogonal_min_norm_weights(squared)
    torch.testing.assert_close(base, torch.tensor([16.0, 1.0, 4.0], dtype=torch.float64) / 21)
    for s in (2.0 ** -60, 2.0 ** -30, 2.0 ** 30, 2.0 ** 60):
        torch.testing.assert_close(orthogonal_min_norm_weights(squared * s * s), base)
    torch.testing.assert_close(orthogonal_min_norm_weights(torch.tensor([0.0, 4.0, 0.0])), torch.tensor([0.5, 0.0, 0.5]))
    assert torch.isfinite(orthogonal_min_norm_weights(torch.zeros(3))).all()
