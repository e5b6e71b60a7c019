"""rlw: hand-computed weights and gradients, one draw per optimizer step, seeding and resume."""

from __future__ import annotations

import math

import pytest
import torch

from mtbert.interfaces import LoopContext
from mtbert_focal.gradients import RandomLossWeighting, RlwOptions


def method(tasks=("a", "b"), shared=(), private=(), **options):
    m = RandomLossWeighting(RlwOptions(**options))
    m.setup(list(shared), list(private), list(tasks), LoopContext())
    return m


def fixed_noise(m, *rows):
    """Make m draw the given eps rows, one row per optimizer step."""
    queue = [torch.tensor(r, dtype=torch.float64) for r in rows]
    m.noise = lambda count: queue.pop(0)
    return queue


def test_weights_are_the_softmax_of_the_draws_by_hand():
    # eps = (0, ln 3): softmax = (1/4, 3/4)
    w = torch.tensor(1.0, requires_grad=True)
    m = method(shared=[("w", w)], total="one")
    fixed_noise(m, [0.0, math.log(3.0)])
    # L_a = 2w, L_b = 3w^2: dL/dw = 1/4 * 2 + 3/4 * 6w = 0.5 + 4.5 = 5 at w = 1
    m.backward({"a": 2 * w, "b": 3 * w * w})
    assert w.grad.item() == pytest.approx(5.0)
    assert m.finish() == pytest.approx({"weight/a": 0.25, "weight/b": 0.75})


def test_total_tasks_scales_by_the_number_of_tasks():
    w = torch.tensor(1.0, requires_grad=True)
    m = method(shared=[("w", w)], total="tasks")
    fixed_noise(m, [0.0, math.log(3.0)])
    m.backward({"a": 2 * w, "b": 3 * w * w})
    assert w.grad.item() == pytest.approx(10.0)  # 2 x (1/4 * 2 + 3/4 * 6)
    assert m.finish() == pytest.approx({"weight/a": 0.5, "weight/b": 1.5})


def test_equal_draws_give_the_sum():
    # eps all equal: lambda = 1/3 each, times T = 3: exactly mtbert's "sum"
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    m = method(tasks=("a", "b", "c"), shared=[("w", w)])
    fixed_noise(m, [0.7, 0.7, 0.7])
    m.backward({"a": w.sum(), "b": (w * w).sum(), "c": 3 * w[0]})
    assert w.grad.tolist() == pytest.approx([1 + 2 + 3, 1 - 4])


def test_private_parameters_get_their_task_weight_too():
    head = torch.tensor(0.0, requires_grad=True)
    m = method(private=[head], total="one")
    fixed_noise(m, [math.log(3.0), 0.0])  # (3/4, 1/4)
    m.backward({"a": 4 * head, "b": 8 * head})
    assert head.grad.item() == pytest.approx(3 / 4 * 4 + 1 / 4 * 8)


def test_one_draw_per_optimizer_step_shared_by_micro_batches():
    w = torch.tensor(1.0, requires_grad=True)
    m = method(shared=[("w", w)], total="one")
    fixed_noise(m, [0.0, math.log(3.0)], [math.log(3.0), 0.0])
    m.backward({"a": w, "b": 0 * w})  # micro-batch 1 of step 1
    m.backward({"a": w, "b": 0 * w})  # micro-batch 2: same weights
    assert w.grad.item() == pytest.approx(2 * 0.25)
    assert m.finish() == pytest.approx({"weight/a": 0.25, "weight/b": 0.75})
    w.grad = None
    m.backward({"a": w, "b": 0 * w})  # step 2: the next draw
    assert w.grad.item() == pytest.approx(0.75)
    assert m.finish() == pytest.approx({"weight/a": 0.75, "weight/b": 0.25})
    assert m.finish() == {}  # nothing since the last step


def test_a_step_with_some_tasks_softmaxes_over_those():
    w = torch.tensor(1.0, requires_grad=True)
    m = method(tasks=("a", "b", "c"), shared=[("w", w)], total="one")
    fixed_noise(m, [0.0, 5.0, math.log(3.0)])
    m.backward({"a": w, "c": 0 * w})  # b absent: softmax(0, ln 3) = (1/4, 3/4)
    assert m.finish() == pytest.approx({"weight/a": 0.25, "weight/c": 0.75})


def test_draws_are_standard_normal():
    """For two tasks lambda_a = sigmoid(eps_a - eps_b) with eps_a - eps_b ~ N(0, 2), so
    P(lambda_a > sigmoid(sqrt 2)) = P(Z > 1) = 0.15866 (a uniform or unit-variance
    difference would give a different number)."""
    m = method(total="one")
    threshold = 1 / (1 + math.exp(-math.sqrt(2.0)))
    above, n = 0, 20000
    for _ in range(n):
        above += m.weights(["a", "b"])["a"] > threshold
        m.finish()
    assert above / n == pytest.approx(0.15866, abs=0.01)


def test_seeded_and_resumable():
    def draws(m, k):
        out = []
        for _ in range(k):
            out.append(m.weights(["a", "b"])["a"])
            m.finish()
        return out

    first, second = method(seed=7), method(seed=7)
    assert draws(first, 3) == draws(second, 3)
    assert draws(method(seed=8), 3) != draws(method(seed=7), 3)
    saved = first.state_dict()
    expected = draws(first, 2)
    resumed = method(seed=123)
    resumed.load_state_dict(saved)
    assert draws(resumed, 2) == expected


def test_needs_every_task_in_each_step():
    assert RandomLossWeighting.needs_all_tasks is True
