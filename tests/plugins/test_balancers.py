"""Balancers: uncertainty weighting's math, and how the core adopts a balancer's parameters."""

from __future__ import annotations

import math
import types

import pytest
import torch
from safetensors.torch import load_file

from mtbert.model.build import make
from mtbert.base.errors import SpecError
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import GradientMethod, LoopContext, TaskInfo
from mtbert.plugin.loading import build_registry
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_component, structure_spec, unstructure
from mtbert.training.loop import Trainer

from helpers import toy_data, toy_spec


def uncertainty(registry, **options):
    balancer = make(registry, structure_component("balancers", {"name": "uncertainty", **options}, registry))
    balancer.setup({"cls": TaskInfo(1.0, "multiclass"), "reg": TaskInfo(1.0, "regression")}, LoopContext())
    return balancer


def test_uncertainty_on_a_hand_computed_two_task_case(registry):
    """Kendall et al.: exp(-s) L + s/2 (classification), 1/2 exp(-s) L + s/2 (regression)."""
    b = uncertainty(registry)
    with torch.no_grad():
        b.log_vars["cls"].fill_(0.5)
        b.log_vars["reg"].fill_(-1.0)
    out = b.weigh({"cls": torch.tensor(2.0), "reg": torch.tensor(3.0)})
    total = out["cls"] + out["reg"]
    expected = math.exp(-0.5) * 2.0 + 0.25 + 0.5 * math.exp(1.0) * 3.0 - 0.5
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    # d/ds_cls = -exp(-s) L + 1/2;  d/ds_reg = -1/2 exp(-s) L + 1/2
    assert b.log_vars["cls"].grad.item() == pytest.approx(-math.exp(-0.5) * 2.0 + 0.5, rel=1e-6)
    assert b.log_vars["reg"].grad.item() == pytest.approx(-0.5 * math.exp(1.0) * 3.0 + 0.5, rel=1e-6)


def test_uncertainty_simple_form_and_its_optimum(registry):
    """exp(-s) L + s is smallest at s = log L: the learned variance is the loss itself."""
    b = uncertainty(registry, form="simple", init=math.log(4.0))
    loss = torch.tensor(4.0)
    out = b.weigh({"cls": loss, "reg": loss})
    assert out["reg"].item() == pytest.approx(1.0 + math.log(4.0), rel=1e-6)  # no 1/2 in this form
    (out["cls"] + out["reg"]).backward()
    assert b.log_vars["cls"].grad.item() == pytest.approx(0.0, abs=1e-6)


def test_task_weights_multiply_the_loss_term(registry):
    b = make(registry, structure_component("balancers", "uncertainty", registry))
    b.setup({"a": TaskInfo(3.0, "multiclass")}, LoopContext())
    assert b.weigh({"a": torch.tensor(2.0)})["a"].item() == pytest.approx(6.0)
    equal = make(registry, structure_component("balancers", "equal", registry))
    equal.setup({"a": TaskInfo(3.0, "multiclass")}, LoopContext())
    assert equal.weigh({"a": torch.tensor(2.0)})["a"].item() == pytest.approx(6.0)


def spec_with(registry, tmp_path, **changes):
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=64), epochs=1, log_every=2))
    train = changes.pop("train", {})
    data.update(changes)
    data["train"].update(train)
    if "phases" in changes:
        data["train"].pop("epochs")
    return structure_spec(data, registry)


def test_parameters_get_their_own_group_and_are_trained(registry, tmp_path):
    spec = spec_with(registry, tmp_path, balancer={"name": "uncertainty", "lr": 0.05},
                     sampler="all_tasks", gradient="pcgrad")
    trainer = Trainer(spec, registry, progress=False)
    parts = trainer.prepare_phase(trainer.phases[0])
    (group,) = [g for g in parts.optimizer.param_groups if g["name"] == "balancer"]
    balancer = trainer.balancers.get(spec.balancer)
    assert group["lr"] == pytest.approx(0.05) and group["weight_decay"] == 0.0
    assert {id(p) for p in group["params"]} == {id(p) for p in balancer.log_vars.values()}
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    learned = {t: float(p.detach()) for t, p in balancer.log_vars.items()}
    assert all(v != 0.0 for v in learned.values())  # trained by the run's optimizer, from init 0
    saved = load_file(str(tmp_path / "run" / "checkpoint" / "balancers.safetensors"))
    assert set(saved) == {"balancers.uncertainty.log_vars.sent", "balancers.uncertainty.log_vars.count"}


def test_parameters_are_kept_across_phases(registry, tmp_path):
    spec = spec_with(registry, tmp_path, balancer="uncertainty",
                     phases=[{"name": "heads", "trainable": "heads", "steps": 3}, {"name": "all", "steps": 3}])
    trainer = Trainer(spec, registry, progress=False)
    seen = []
    original = trainer.prepare_phase

    def spy(phase, state=None):
        parts = original(phase, state)
        seen.append((parts.balancer, {t: float(p.detach()) for t, p in parts.balancer.log_vars.items()}))
        return parts

    trainer.prepare_phase = spy
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    (first, at_first), (second, at_second) = seen
    assert first is second  # one balancer for the run
    assert at_first == {"sent": 0.0, "count": 0.0} and all(v != 0.0 for v in at_second.values())


class NeedsWeights(GradientMethod):
    """A gradient method that trains with a balancer's learnable weights (as GradNorm does)."""

    requires = frozenset({"learnable_task_weights"})

    def __init__(self, options):
        pass

    def backward(self, losses):
        torch.stack(list(losses.values())).sum().backward()


def test_components_that_need_one_another_are_checked_at_validation(tmp_path):
    plugin = types.ModuleType("needs_weights")
    plugin.register_gradients = hookimpl(lambda register: register("needs_weights", NeedsWeights))
    registry = build_registry(modules=[("needs_weights", plugin, "local")])
    with pytest.raises(SpecError) as refused:
        spec_with(registry, tmp_path, gradient="needs_weights")
    assert "gradient: \"needs_weights\" needs \"learnable_task_weights\"" in str(refused.value)
    assert "uncertainty" in str(refused.value)  # names a plugin that provides it
    assert not (tmp_path / "runs").exists()
    spec_with(registry, tmp_path, gradient="needs_weights", balancer="uncertainty")  # provided: accepted


# -- the balancers of the multitask-optimization family (issue 13) ----------------------------------

def built(registry, name, tasks=("a", "b"), weights=None, **options):
    b = make(registry, structure_component("balancers", {"name": name, **options}, registry))
    weights = weights or [1.0] * len(tasks)
    b.setup({t: TaskInfo(w, "multiclass") for t, w in zip(tasks, weights)}, LoopContext())
    return b


def values(out):
    return {t: float(v.detach()) for t, v in out.items()}


def test_dwa_equal_for_two_epochs_then_the_formula(registry):
    b = built(registry, "dwa")
    one = {"a": torch.tensor(1.0), "b": torch.tensor(1.0)}
    assert values(b.weigh(one)) == {"a": 1.0, "b": 1.0}
    b.epoch_end(1, {"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    assert values(b.weigh(one)) == {"a": 1.0, "b": 1.0}  # one epoch: no ratio yet
    b.epoch_end(2, {"a": torch.tensor(1.0), "b": torch.tensor(3.0)})
    r_a, r_b = 1.0 / 2.0, 3.0 / 4.0  # L(e-1) / L(e-2)
    w_a = 2 * math.exp(r_a / 2) / (math.exp(r_a / 2) + math.exp(r_b / 2))
    got = values(b.weigh(one))
    assert got["a"] == pytest.approx(w_a, rel=1e-6) and got["b"] == pytest.approx(2 - w_a, rel=1e-6)
    assert got["b"] > got["a"]  # the task whose loss fell less gets more weight
    b.epoch_end(3, {"a": torch.tensor(0.5), "b": torch.tensor(3.0)})  # ratios of epochs 2 and 3 now
    r_a, r_b = 0.5 / 1.0, 3.0 / 3.0
    w_a = 2 * math.exp(r_a / 2) / (math.exp(r_a / 2) + math.exp(r_b / 2))
    assert values(b.weigh(one))["a"] == pytest.approx(w_a, rel=1e-6)


def test_dwa_state_round_trips(registry):
    b = built(registry, "dwa")
    for epoch, (la, lb) in enumerate([(2.0, 4.0), (1.0, 3.0)], 1):
        b.epoch_end(epoch, {"a": torch.tensor(la), "b": torch.tensor(lb)})
    fresh = built(registry, "dwa")
    fresh.load_state_dict(b.state_dict())
    one = {"a": torch.tensor(1.0), "b": torch.tensor(1.0)}
    assert values(fresh.weigh(one)) == values(b.weigh(one))


def test_gls_is_the_geometric_mean_with_its_gradient(registry):
    b = built(registry, "gls", tasks=("a", "b", "c"))
    losses = {t: torch.tensor(v, requires_grad=True) for t, v in (("a", 2.0), ("b", 8.0), ("c", 0.5))}
    total = sum(b.weigh(losses).values())
    mean = (2.0 * 8.0 * 0.5) ** (1 / 3)
    assert total.item() == pytest.approx(mean, rel=1e-6)
    total.backward()
    for t, v in (("a", 2.0), ("b", 8.0), ("c", 0.5)):
        assert losses[t].grad.item() == pytest.approx(mean / (3 * v), rel=1e-6)  # d/dL_t of the mean


def test_gls_spec_weights_are_exponents(registry):
    b = built(registry, "gls", weights=[3.0, 1.0])
    out = b.weigh({"a": torch.tensor(2.0), "b": torch.tensor(8.0)})
    assert sum(out.values()).item() == pytest.approx(2.0 ** 0.75 * 8.0 ** 0.25, rel=1e-6)


def test_rlw_softmax_of_seeded_normal_draws_once_per_step(registry):
    b = built(registry, "rlw", tasks=("a", "b", "c"), seed=5)
    z = torch.randn(3, generator=torch.Generator().manual_seed(5))
    expected = torch.softmax(z, dim=0)
    ones = {t: torch.tensor(1.0) for t in "abc"}
    first = values(b.weigh(ones))
    assert list(first.values()) == pytest.approx(expected.tolist(), rel=1e-6)
    assert values(b.weigh(ones)) == first  # a second micro-batch of the same step: same draw
    assert values(b.weigh({"a": torch.tensor(1.0), "c": torch.tensor(1.0)}))["a"] == pytest.approx(
        float(torch.softmax(z[[0, 2]], dim=0)[0]), rel=1e-6)  # some tasks: softmax over those
    b.after_step({})
    assert values(b.weigh(ones)) != first  # the next step draws anew
    tasks_total = built(registry, "rlw", tasks=("a", "b", "c"), seed=5, total="tasks")
    assert sum(values(tasks_total.weigh(ones)).values()) == pytest.approx(3.0, rel=1e-6)


def test_rlw_resumes_its_draws(registry):
    b = built(registry, "rlw", seed=1)
    ones = {"a": torch.tensor(1.0), "b": torch.tensor(1.0)}
    b.weigh(ones)
    b.after_step({})
    saved = b.state_dict()
    expected = values(b.weigh(ones))
    fresh = built(registry, "rlw", seed=1)
    fresh.load_state_dict(saved)
    assert values(fresh.weigh(ones)) == expected


def test_famo_weights_are_the_inverse_loss_convex_combination(registry):
    b = built(registry, "famo")
    losses = {"a": torch.tensor(2.0, requires_grad=True), "b": torch.tensor(4.0, requires_grad=True)}
    sum(b.weigh(losses).values()).backward()
    # z = (1/2, 1/2), c = 1/2 / 2 + 1/2 / 4 = 3/8: coefficients z_t / (c L_t) = 2/3 and 1/3
    assert losses["a"].grad.item() == pytest.approx(2 / 3, rel=1e-5)
    assert losses["b"].grad.item() == pytest.approx(1 / 3, rel=1e-5)


class OfficialFamo:
    """FAMO's weight update as the paper's Algorithm 1 and its official code define it: logits w,
    torch's Adam (lr 0.025, weight decay gamma = 0.01) stepped on J^T delta, delta the decrease of
    each task's log-loss from the previous losses to the current ones; the first call only records."""

    def __init__(self, count):
        self.w = torch.zeros(count, requires_grad=True)
        self.adam = torch.optim.Adam([self.w], lr=0.025, weight_decay=0.01)
        self.previous = None

    def update(self, now):
        if self.previous is not None:
            delta = torch.log(self.previous + 1e-8) - torch.log(now + 1e-8)
            self.adam.zero_grad()
            self.w.grad = torch.autograd.grad(torch.softmax(self.w, 0), self.w, grad_outputs=delta)[0]
            self.adam.step()
        self.previous = now


def test_famo_first_update_is_the_official_one(registry):
    """Losses (1, 1) then (0.5, 0.9): the first Adam step moves each logit by lr = 0.025 exactly
    (a bias-corrected first step has |m / sqrt(v)| = 1, less Adam's eps); an empty Adam step before it made
    0.0186."""
    b = built(registry, "famo")
    b.after_step({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
    assert torch.equal(b.logits, torch.zeros(2)) and int(b.adam_steps) == 0
    b.after_step({"a": torch.tensor(0.5), "b": torch.tensor(0.9)})
    torch.testing.assert_close(b.logits, torch.tensor([-0.025, 0.025]), atol=1e-6, rtol=0)  # Adam eps 1e-8
    assert int(b.adam_steps) == 1


def test_famo_logits_follow_adam_on_the_softmax_jacobian(registry):
    """The logits' update against the official algorithm (torch's Adam, weight decay gamma, on
    autograd's J^T delta), step for step from the first."""
    b = built(registry, "famo", tasks=("a", "b", "c"))
    oracle = OfficialFamo(3)
    history = [(2.0, 4.0, 1.0), (1.0, 4.0, 0.9), (0.8, 3.0, 0.9), (0.7, 3.1, 0.5)]
    for step in history:
        now = torch.tensor(step)
        b.after_step(dict(zip("abc", now)))
        oracle.update(now)
        assert torch.allclose(b.logits, oracle.w.detach(), rtol=1e-5, atol=1e-7), (b.logits, oracle.w)
    z = torch.softmax(b.logits, 0)
    assert z[1] > z[0]  # b's loss fell least (4 -> 3.1, a: 2 -> 0.7): its weight grew


def test_famo_state_round_trips(registry):
    b = built(registry, "famo")
    for step in [(2.0, 4.0), (1.0, 4.0)]:
        b.after_step(dict(zip("ab", torch.tensor(step))))
    fresh = built(registry, "famo")
    fresh.load_state_dict(b.state_dict())
    assert int(fresh.adam_steps) == 1 and torch.equal(fresh.logits, b.logits)
    fresh.after_step({"a": torch.tensor(0.5), "b": torch.tensor(3.0)})
    b.after_step({"a": torch.tensor(0.5), "b": torch.tensor(3.0)})
    assert torch.equal(fresh.logits, b.logits)


def test_imtl_l_scales_pull_every_scaled_loss_to_one(registry):
    """exp(s) w L - s at s = 0: the loss value is w L and d/ds = w L - 1."""
    balancer = make(registry, structure_component("balancers", {"name": "imtl_l"}, registry))
    balancer.setup({"a": TaskInfo(1.0, "multiclass"), "b": TaskInfo(2.0, "regression")}, LoopContext())
    losses = {"a": torch.tensor(3.0), "b": torch.tensor(0.25)}
    out = balancer.weigh(losses)
    assert out["a"].item() == pytest.approx(3.0) and out["b"].item() == pytest.approx(0.5)
    (out["a"] + out["b"]).backward()
    assert balancer.scales["a"].grad.item() == pytest.approx(2.0)
    assert balancer.scales["b"].grad.item() == pytest.approx(-0.5)
    # at s = -log(w L) the scaled loss is 1 and the derivative vanishes
    with torch.no_grad():
        balancer.scales["a"].fill_(-math.log(3.0))
    balancer.scales["a"].grad = None
    scaled = balancer.weigh(losses)["a"]
    scaled.backward()
    assert balancer.scales["a"].grad.item() == pytest.approx(0.0, abs=1e-6)


def gradnorm_case(registry, **options):
    """Two tasks on one shared 'last layer' W = (1, 1): L_1 = 2 W.e1 (|grad_W| = 2), L_2 = W.e2 (1)."""
    from torch import nn
    W = nn.Parameter(torch.ones(2))
    balancer = make(registry, structure_component("balancers", {"name": "gradnorm", **options}, registry))
    context = LoopContext(shared_parameters=lambda: [("encoder.layer.0.w", W), ("encoder.embeddings.w", W)])
    balancer.setup({"a": TaskInfo(1.0, "multiclass"), "b": TaskInfo(1.0, "regression")}, context)
    return balancer, W


def test_gradnorm_first_step_by_hand(registry):
    """Step 1: L(0) = L, so r = (1, 1); G = w |grad_W L| = (2, 1), G_bar = 1.5; L_grad = |2 - 1.5| +
    |1 - 1.5| has gradient (+2, -1) in w. The model trains on w_t L_t: W's gradient (2, 1)."""
    balancer, W = gradnorm_case(registry)
    out = balancer.weigh({"a": 2 * W[0], "b": W[1]})
    assert out["a"].item() == pytest.approx(2.0) and out["b"].item() == pytest.approx(1.0)  # values: w_t L_t
    (out["a"] + out["b"]).backward()
    torch.testing.assert_close(balancer.weights.grad, torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(W.grad, torch.tensor([2.0, 1.0]))


def test_gradnorm_targets_favour_the_slower_task(registry):
    """Step 2 after L_1 halved (ratio 0.5) and L_2 kept (1): r = (2/3, 4/3); with w = (1.2, 0.8),
    G = (2.4, 0.8), G_bar = 1.6, target = 1.6 r^1.5 = (0.871, 2.463): both gaps' signs give
    w's gradient (+2, -1) and the weights renormalise to sum 2."""
    balancer, W = gradnorm_case(registry)
    balancer.weigh({"a": 2 * W[0], "b": W[1]})  # sets L(0) = (2, 1)
    with torch.no_grad():
        balancer.weights.copy_(torch.tensor([1.2, 0.8]))
    balancer.weights.grad = None
    out = balancer.weigh({"a": 2 * W[0] * 0.5, "b": W[1]})
    (out["a"] + out["b"]).backward()
    norms = torch.tensor([1.0, 1.0])  # |grad_W| of L_1 = W.e1 and L_2 = W.e2
    g = torch.tensor([1.2, 0.8]) * norms
    r = torch.tensor([0.5, 1.0]) / 0.75
    target = g.mean() * r ** 1.5
    torch.testing.assert_close(balancer.weights.grad, torch.sign(g - target) * norms)
    with torch.no_grad():
        balancer.weights.copy_(torch.tensor([1.5, 1.0]))
    balancer.after_step({})
    torch.testing.assert_close(balancer.weights.detach(), torch.tensor([1.2, 0.8]))


def test_gradnorm_uses_the_last_layer_only(registry):
    from mtbert_plugins.balancers.gradnorm import last_layer
    from torch import nn
    params = [(name, nn.Parameter(torch.zeros(1))) for name in
              ("encoder.embeddings.w", "encoder.layer.0.w", "encoder.layer.11.w", "encoder.layer.11.b",
               "encoder.layer.2.w", "encoder.pooler.w")]
    assert last_layer(params) == [params[2][1], params[3][1]]
    assert last_layer(params[:1]) == [params[0][1]]  # no numbered layers: every shared parameter
