"""initial_loss on hand-computed cases: the first step is the plain sum, later ones L_t / L_t(0)."""

from __future__ import annotations

import pytest
import torch

from mtbert.interfaces import LoopContext, TaskInfo
from mtbert_focal.balancers import InitialLoss


def balancer(weights=(1.0, 1.0)):
    b = InitialLoss()
    b.setup({"a": TaskInfo(weights[0], "multiclass"), "b": TaskInfo(weights[1], "regression")}, LoopContext())
    return b


def test_first_step_is_the_plain_weighted_sum():
    b = balancer(weights=(1.0, 3.0))
    out = b.weigh({"a": torch.tensor(2.0), "b": torch.tensor(5.0)})
    assert out["a"].item() == pytest.approx(2.0) and out["b"].item() == pytest.approx(15.0)


def test_later_steps_divide_by_the_first_loss():
    b = balancer()
    b.step_end({"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    b.step_end({"a": torch.tensor(9.0), "b": torch.tensor(9.0)})  # only the first step counts
    loss_a = torch.tensor(1.0, requires_grad=True)
    out = b.weigh({"a": loss_a, "b": torch.tensor(1.0)})
    assert out["a"].item() == pytest.approx(0.5) and out["b"].item() == pytest.approx(0.25)
    out["a"].backward()
    assert loss_a.grad.item() == pytest.approx(0.5)  # the scale is a constant, not trained


def test_a_task_first_seen_later_is_measured_then():
    b = balancer()
    b.step_end({"a": torch.tensor(2.0)})
    assert b.weigh({"b": torch.tensor(3.0)})["b"].item() == pytest.approx(3.0)
    b.step_end({"b": torch.tensor(3.0)})
    assert b.weigh({"b": torch.tensor(3.0)})["b"].item() == pytest.approx(1.0)


def test_the_state_round_trips():
    b = balancer()
    b.step_end({"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    fresh = balancer()
    fresh.load_state_dict(b.state_dict())
    assert torch.equal(fresh.initial, torch.tensor([2.0, 4.0]))
