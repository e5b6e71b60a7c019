"""Learning-rate schedules, parameter groups, optimizers and the `sum` gradient method.

Schedules are read off a real LambdaLR driven by optimizer.step() /
scheduler.step(); optimizer steps are checked against the update rules
computed by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtbert.model.build import make, param_groups
from mtbert.base.errors import SpecError
from mtbert.plugin.interfaces import ParamGroup
from mtbert.model.multitask import MultitaskModel
from mtbert.config.spec import structure_component


def build(registry, kind, value, *args):
    return make(registry, structure_component(kind, value, registry), *args)


# -- schedules -----------------------------------------------------------------------------

def lr_trace(registry, schedule, total, base_lrs=(1.0,)) -> list[list[float]]:
    """lr of each group used at optimizer steps s = 0 .. total (lr after s scheduler steps)."""
    params = [nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    groups = [ParamGroup([p], lr, True, f"g{i}") for i, (p, lr) in enumerate(zip(params, base_lrs))]
    optimizer = build(registry, "optimizers", "sgd", groups)
    scheduler = build(registry, "schedulers", schedule, optimizer, total)
    trace = []
    for _ in range(total + 1):
        trace.append([g["lr"] for g in optimizer.param_groups])
        assert scheduler.get_last_lr() == trace[-1]
        for p in params:
            p.grad = torch.zeros(1)
        optimizer.step()
        scheduler.step()
    return trace


S, W = 20, 4  # total steps, warm-up steps


@pytest.mark.parametrize("schedule, expected", [
    # warm-up s/W: s=0 -> 0, s=2 -> 2/4; then
    # linear (S-s)/(S-W): s=4 -> 16/16, s=8 -> 12/16, s=12 -> 8/16, s=20 -> 0
    ("linear", {0: 0.0, 1: 0.25, 2: 0.5, 4: 1.0, 8: 0.75, 12: 0.5, 19: 1 / 16, 20: 0.0}),
    # cosine 0.5 (1 + cos(pi (s-W)/(S-W))): s=8 -> 0.5 (1 + cos(pi/4)) = 0.85355, s=12 -> 0.5, s=20 -> 0
    ("cosine", {0: 0.0, 2: 0.5, 4: 1.0, 8: 0.5 * (1 + math.cos(math.pi / 4)), 12: 0.5,
                16: 0.5 * (1 + math.cos(3 * math.pi / 4)), 20: 0.0}),
    # constant after warm-up
    ("constant", {0: 0.0, 2: 0.5, 3: 0.75, 4: 1.0, 12: 1.0, 20: 1.0}),
])
def test_schedule_multipliers_with_warmup_steps(registry, schedule, expected):
    trace = lr_trace(registry, {"name": schedule, "warmup_steps": W}, S, base_lrs=(1.0, 0.1))
    for step, mult in expected.items():
        assert trace[step][0] == pytest.approx(mult, abs=1e-12), (schedule, step)
        assert trace[step][1] == pytest.approx(0.1 * mult, abs=1e-12), (schedule, step)  # each group's own base


def test_schedule_without_warmup_starts_at_full_lr(registry):
    trace = lr_trace(registry, "linear", 10)
    # W = ceil(0 * 10) = 0: s=0 -> 1, s=5 -> 5/10, s=10 -> 0
    assert [trace[s][0] for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])


def test_warmup_ratio_uses_ceiling(registry):
    # W = ceil(0.1 * 25) = ceil(2.5) = 3 (floor or round would give 2)
    trace = lr_trace(registry, {"name": "linear", "warmup_ratio": 0.1}, 25)
    assert trace[1][0] == pytest.approx(1 / 3)
    assert trace[2][0] == pytest.approx(2 / 3)
    assert trace[3][0] == pytest.approx(1.0)
    # linear decay over S - W = 22 steps: s=14 -> (25-14)/22 = 0.5
    assert trace[14][0] == pytest.approx(0.5)
    assert trace[25][0] == pytest.approx(0.0)


def test_warmup_ratio_ceiling_is_exact_for_decimal_ratios(registry):
    # W = ceil(0.07 * 100) = 7: at s = 7 warm-up is over and the linear multiplier is (100-7)/93 = 1
    trace = lr_trace(registry, {"name": "linear", "warmup_ratio": 0.07}, 100)
    assert trace[7][0] == pytest.approx(1.0)


@pytest.mark.parametrize("value", [
    {"name": "linear", "warmup_steps": 5, "warmup_ratio": 0.1},
    {"name": "cosine", "warmup_steps": 0, "warmup_ratio": 0.2},
])
def test_warmup_steps_and_ratio_together_is_a_spec_error(registry, value):
    with pytest.raises(SpecError, match=r"schedulers\.warmup_steps: give warmup_steps or warmup_ratio, not both"):
        structure_component("schedulers", value, registry)


def test_warmup_ratio_out_of_range_is_a_spec_error(registry):
    with pytest.raises(SpecError, match=r"schedulers\.warmup_ratio: must be between 0.0 and 1.0"):
        structure_component("schedulers", {"name": "linear", "warmup_ratio": 1.5}, registry)


# -- parameter groups ------------------------------------------------------------------------

@pytest.fixture
def tiny_model(registry, tiny_encoder):
    head = build(registry, "heads", {"name": "classifier", "num_labels": 3}, tiny_encoder.hidden_size)
    return MultitaskModel(tiny_encoder, {"sst": head})


def test_param_groups_split_decay_and_learning_rates(tiny_model):
    groups = param_groups(tiny_model, lr=1e-4, head_lr=1e-3)
    by_name = {g.name: g for g in groups}
    assert set(by_name) == {"encoder", "encoder.no_decay", "heads", "heads.no_decay"}
    assert by_name["encoder"].lr == by_name["encoder.no_decay"].lr == 1e-4
    assert by_name["heads"].lr == by_name["heads.no_decay"].lr == 1e-3
    assert all(g.decay == (not g.name.endswith("no_decay")) for g in groups)

    # every trainable parameter in exactly one group
    grouped = [id(p) for g in groups for p in g.params]
    assert len(grouped) == len(set(grouped)) == len(list(tiny_model.parameters()))

    group_of = {id(p): g.name for g in groups for p in g.params}
    head = tiny_model.heads["sst"]
    assert group_of[id(head.linear.weight)] == "heads"
    assert group_of[id(head.linear.bias)] == "heads.no_decay"
    enc = tiny_model.encoder
    assert group_of[id(enc.embeddings.word.weight)] == "encoder"
    assert group_of[id(enc.layers[0].attention.query.weight)] == "encoder"
    assert group_of[id(enc.layers[0].attention.query.bias)] == "encoder.no_decay"
    assert group_of[id(enc.embeddings.norm.weight)] == "encoder.no_decay"

    # all biases and all LayerNorm parameters are in no-decay groups, everything else decays
    norm_params = {id(p) for m in tiny_model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    assert len(norm_params) == 2 * (1 + 2 * 2)  # embeddings + 2 per layer, weight and bias each
    for name, p in tiny_model.named_parameters():
        no_decay = name.endswith(".bias") or id(p) in norm_params
        assert group_of[id(p)].endswith("no_decay") == no_decay, name


def test_param_groups_head_lr_defaults_to_lr(tiny_model):
    groups = param_groups(tiny_model, lr=3e-5, head_lr=None)
    assert {g.lr for g in groups} == {3e-5}


def test_param_groups_skip_frozen_parameters():
    encoder = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    encoder[0].weight.requires_grad_(False)
    model = MultitaskModel(encoder, {"t": nn.Linear(2, 1)})
    groups = {g.name: g.params for g in param_groups(model, 0.1, 0.2)}
    assert set(groups) == {"encoder.no_decay", "heads", "heads.no_decay"}  # the only decaying encoder weight is frozen
    assert [p.shape for p in groups["encoder.no_decay"]] == [(2,), (2,), (2,)]  # linear bias, norm weight + bias
    assert all(p.requires_grad for ps in groups.values() for p in ps)


# -- optimizers ----------------------------------------------------------------------------

def test_adamw_weight_decay_only_on_decay_groups_and_fused_by_default(registry, tiny_model):
    groups = param_groups(tiny_model, lr=1e-4, head_lr=1e-3)
    optimizer = build(registry, "optimizers", {"name": "adamw", "weight_decay": 0.05}, groups)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults.get("fused") is True  # torch's fused kernel runs on the CPU too
    plain = build(registry, "optimizers", {"name": "adamw", "fused": "off"}, groups)
    assert not plain.defaults.get("fused")
    torch_groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(torch_groups) == {"encoder", "encoder.no_decay", "heads", "heads.no_decay"}
    assert torch_groups["encoder"]["weight_decay"] == 0.05
    assert torch_groups["heads"]["weight_decay"] == 0.05
    assert torch_groups["encoder.no_decay"]["weight_decay"] == 0.0
    assert torch_groups["heads.no_decay"]["weight_decay"] == 0.0
    assert torch_groups["heads"]["lr"] == 1e-3 and torch_groups["encoder"]["lr"] == 1e-4
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8


def test_adamw_two_steps_match_the_formula(registry):
    decayed = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    plain = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = build(registry, "optimizers", {"name": "adamw", "weight_decay": 0.01},
                      [ParamGroup([decayed], 0.1, True, "d"), ParamGroup([plain], 0.1, False, "n")])
    # AdamW, lr 0.1, wd 0.01, betas (0.9, 0.999), eps 1e-8; grads 0.5 then -0.25:
    # step 1: p <- p (1 - lr wd) = 0.999 ; m = 0.05, v = 0.00025 ; m^ = 0.5, v^ = 0.25
    #         p <- 0.999 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.899000002
    # step 2: p <- 0.899000002 * 0.999 ; m = 0.9*0.05 + 0.1*(-0.25) = 0.02 ;
    #         v = 0.999*0.00025 + 0.001*0.0625 = 0.00031225 ; m^ = 0.02/0.19, v^ = 0.00031225/0.001999
    #         p <- p - 0.1 * m^ / (sqrt(v^) + 1e-8) = 0.8714672987...
    # without decay: 0.900000002, then 0.900000002 - 0.026633700... = 0.8733662987...
    expected = {1: (0.899000002, 0.900000002), 2: (0.8714672987058463, 0.8733662987078463)}
    for step, grad in ((1, 0.5), (2, -0.25)):
        decayed.grad = torch.tensor([grad], dtype=torch.float64)
        plain.grad = torch.tensor([grad], dtype=torch.float64)
        optimizer.step()
        assert decayed.item() == pytest.approx(expected[step][0], abs=1e-12)
        assert plain.item() == pytest.approx(expected[step][1], abs=1e-12)


def test_adamw_beta_out_of_range_is_a_spec_error(registry):
    with pytest.raises(SpecError, match=r"optimizers\.betas\[1\]: must be in \[0, 1\)"):
        structure_component("optimizers", {"name": "adamw", "betas": [0.9, 1.0]}, registry)


def run_sgd(registry, options, grads, decay=True):
    p = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = build(registry, "optimizers", {"name": "sgd", **options}, [ParamGroup([p], 0.1, decay, "g")])
    values = []
    for g in grads:
        p.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        values.append(p.item())
    return values


def test_sgd_momentum_two_steps(registry):
    # lr 0.1, mu 0.9, p0 = 1, grads 1.0 then 0.5:
    # step 1: buf = g = 1.0              -> p = 1 - 0.1 * 1.0 = 0.9
    # step 2: buf = 0.9 * 1.0 + 0.5 = 1.4 -> p = 0.9 - 0.14 = 0.76
    assert run_sgd(registry, {"momentum": 0.9}, [1.0, 0.5]) == pytest.approx([0.9, 0.76])


def test_sgd_plain_and_nesterov(registry):
    # no momentum: 1 - 0.1, then 0.9 - 0.05
    assert run_sgd(registry, {}, [1.0, 0.5]) == pytest.approx([0.9, 0.85])
    # Nesterov: update = g + mu * buf: step 1: 1 + 0.9 * 1 = 1.9 -> 0.81
    #                                  step 2: buf = 1.4, 0.5 + 0.9 * 1.4 = 1.76 -> 0.634
    assert run_sgd(registry, {"momentum": 0.9, "nesterov": True}, [1.0, 0.5]) == pytest.approx([0.81, 0.634])


def test_sgd_weight_decay_only_on_decay_groups(registry):
    # wd 0.1, mu 0.9: step 1: g = 1 + 0.1 * 1 = 1.1, buf 1.1 -> p = 0.89
    #                 step 2: g = 0.5 + 0.1 * 0.89 = 0.589, buf = 0.99 + 0.589 = 1.579 -> p = 0.7321
    assert run_sgd(registry, {"momentum": 0.9, "weight_decay": 0.1}, [1.0, 0.5]) == pytest.approx([0.89, 0.7321])
    # a no-decay group ignores weight_decay: same as momentum alone
    assert run_sgd(registry, {"momentum": 0.9, "weight_decay": 0.1}, [1.0, 0.5], decay=False) == \
        pytest.approx([0.9, 0.76])


def test_sgd_nesterov_without_momentum_is_a_spec_error(registry):
    with pytest.raises(SpecError, match=r"optimizers\.nesterov: Nesterov momentum needs momentum > 0"):
        structure_component("optimizers", {"name": "sgd", "nesterov": True}, registry)


# -- the sum gradient method ---------------------------------------------------------------

def test_sum_gradient_scalar_by_hand(registry):
    method = build(registry, "gradients", "sum")
    assert method.needs_all_tasks is False
    w = nn.Parameter(torch.tensor(2.0))
    # l1 = (3w - 1)^2 -> dl1/dw = 6 (3w - 1) = 30 at w = 2 ; l2 = 4w -> 4 ; total 34
    method.backward({"a": (3 * w - 1) ** 2, "b": 4 * w})
    assert w.grad.item() == pytest.approx(34.0)
    # a second micro-batch accumulates into .grad: + dl/dw of 0.5 w^2 = w = 2
    method.backward({"a": 0.5 * w ** 2})
    assert w.grad.item() == pytest.approx(36.0)
    assert method.finish() == {}


def test_sum_gradient_equals_grad_of_summed_losses(registry):
    torch.manual_seed(0)
    shared = nn.Linear(3, 4)
    heads = nn.ModuleDict({"cls": nn.Linear(4, 3), "reg": nn.Linear(4, 1)})
    ce = build(registry, "losses", "cross_entropy")
    mse = build(registry, "losses", "mse")
    x = torch.randn(5, 3)
    labels_cls, labels_reg = torch.tensor([0, 2, 1, 1, 0]), torch.randn(5)

    def losses():
        h = torch.tanh(shared(x))
        return {"cls": 0.5 * ce(heads["cls"](h), labels_cls), "reg": mse(heads["reg"](h).squeeze(-1), labels_reg)}

    params = list(shared.parameters()) + list(heads.parameters())
    step = losses()
    expected = torch.autograd.grad(step["cls"] + step["reg"], params)

    method = build(registry, "gradients", "sum")
    method.backward(losses())
    for p, g in zip(params, expected):
        assert p.grad is not None
        assert torch.allclose(p.grad, g, atol=1e-7)
    # and it is not just one task's gradient
    only_cls = torch.autograd.grad(losses()["cls"], shared.weight)[0]
    assert not torch.allclose(shared.weight.grad, only_cls)
