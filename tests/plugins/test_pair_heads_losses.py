"""Bi-encoder heads, the MLP head option, and the pearson / cosine_mse / ordinal / cosent losses:
the math on small hand-computed cases, validation through the spec, and two tiny end-to-end runs.

Every component is built the way the core builds it: spec data ->
``structure_component`` -> ``make`` through the registry.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from torch import nn

from mtbert.model.build import label_spec, make, pair_encoding
from mtbert.base.errors import PluginError, SpecError
from mtbert.plugin.interfaces import Encoded, LabelSpec
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_component, structure_spec
from mtbert.training.loop import train

from helpers import TINY_ENCODER



def build(registry, kind, value, *args):
    return make(registry, structure_component(kind, value, registry), *args)


def gelu(x: float) -> float:
    """GELU, erf form: x * Phi(x)."""
    return x * 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def pair_example() -> tuple[Encoded, Encoded]:
    """A bi-encoded batch of 2 pairs, hidden size 2, with padding in both sides.

    mean pooling over the real tokens:
      u0 = ([1,2] + [3,4]) / 2 = [2, 3]        (padding [100,-100] ignored)
      u1 = ([0,-1] * 3) / 3    = [0, -1]
      v0 = ([1,0] + [1,2]) / 2 = [1, 1]        (padding [50,50] ignored)
      v1 = ([2,2] + [4,4] + [0,0]) / 3 = [2, 2]
    """
    a = Encoded(torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],
                              [[0.0, -1.0], [0.0, -1.0], [0.0, -1.0]]]),
                torch.tensor([[1, 1, 0], [1, 1, 1]]))
    b = Encoded(torch.tensor([[[1.0, 0.0], [1.0, 2.0], [50.0, 50.0]],
                              [[2.0, 2.0], [4.0, 4.0], [0.0, 0.0]]]),
                torch.tensor([[1, 1, 0], [1, 1, 1]]))
    return a, b


# features [u, v, |u-v|, u*v] of pair_example():
#   pair 0: u=[2,3],  v=[1,1]: |u-v| = [1,2], u*v = [2,3]   -> [2, 3, 1, 1, 1, 2, 2, 3]
#   pair 1: u=[0,-1], v=[2,2]: |u-v| = [2,3], u*v = [0,-2]  -> [0, -1, 2, 2, 2, 3, 0, -2]
FEATURES = torch.tensor([[2.0, 3.0, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0],
                         [0.0, -1.0, 2.0, 2.0, 2.0, 3.0, 0.0, -2.0]])


def vectors(*rows) -> Encoded:
    """Encoded whose cls (and mean) vector is each given row: one token per sequence."""
    return Encoded(torch.tensor(rows, dtype=torch.float32).unsqueeze(1), torch.ones(len(rows), 1, dtype=torch.long))


def set_linear(linear: nn.Linear, weight, bias):
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))


# -- bi-encoder classification heads ---------------------------------------------------------

def test_pair_features_by_hand():
    from mtbert_plugins.heads.bi_encoder import pair_features

    u = torch.tensor([[2.0, 3.0], [0.0, -1.0]])
    v = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    assert torch.equal(pair_features(u, v), FEATURES)


def test_bi_classifier_on_features_with_mean_pooling(registry):
    head = build(registry, "heads", {"name": "bi_classifier", "num_labels": 2}, 2).eval()
    assert head.pair_encoding == "bi" and head.output_kind == "multiclass"
    assert isinstance(head.linear, nn.Linear) and head.linear.in_features == 8  # 4 x hidden
    # logit 0 = |u-v|_0 (feature 4); logit 1 = (u*v)_0 + (u*v)_1 - 1 (features 6, 7)
    set_linear(head.linear, [[0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1]], [0.0, -1.0])
    out = head(pair_example())
    # pair 0: [1, 2 + 3 - 1 = 4] ; pair 1: [2, 0 - 2 - 1 = -3]
    assert out.shape == (2, 2)
    assert torch.allclose(out, torch.tensor([[1.0, 4.0], [2.0, -3.0]]))
    assert head.predict(out).tolist() == [1, 0]


def test_bi_classifier_sees_every_feature(registry):
    head = build(registry, "heads", {"name": "bi_classifier", "num_labels": 8}, 2).eval()
    set_linear(head.linear, torch.eye(8).tolist(), [0.0] * 8)  # identity: the output is the features
    assert torch.allclose(head(pair_example()), FEATURES)


def test_bi_binary_one_logit(registry):
    head = build(registry, "heads", {"name": "bi_binary"}, 2).eval()
    assert head.output_kind == "binary"
    # logit = u_0 - v_0 - 0.5: pair 0: 2 - 1 - 0.5 = 0.5 ; pair 1: 0 - 2 - 0.5 = -2.5
    set_linear(head.linear, [[1, 0, -1, 0, 0, 0, 0, 0]], [-0.5])
    out = head(pair_example())
    assert out.shape == (2,)
    assert torch.allclose(out, torch.tensor([0.5, -2.5]))
    assert head.predict(out).tolist() == [1, 0]


def test_bi_head_pooling_options(registry):
    a, b = pair_example()
    a, b = a._replace(pooled=torch.tensor([[1.0, 0.0], [0.0, 1.0]])), b._replace(pooled=torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    cls = build(registry, "heads", {"name": "bi_classifier", "num_labels": 8, "pooling": "cls"}, 2).eval()
    pooler = build(registry, "heads", {"name": "bi_classifier", "num_labels": 8, "pooling": "pooler"}, 2).eval()
    for head in (cls, pooler):
        set_linear(head.linear, torch.eye(8).tolist(), [0.0] * 8)
    # cls: u = first tokens [1,2], [0,-1]; v = [1,0], [2,2]
    assert torch.allclose(cls((a, b))[:, :4], torch.tensor([[1.0, 2.0, 1.0, 0.0], [0.0, -1.0, 2.0, 2.0]]))
    # pooler: u = [1,0], [0,1]; v = [0,1], [1,1]
    assert torch.allclose(pooler((a, b))[:, :4], torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]]))


def test_bi_head_dropout_on_features_only_in_training(registry):
    head = build(registry, "heads", {"name": "bi_classifier", "num_labels": 8, "dropout": 0.5}, 2)
    set_linear(head.linear, torch.eye(8).tolist(), [0.0] * 8)
    head.eval()
    assert torch.allclose(head(pair_example()), FEATURES)
    head.train()
    out = head(pair_example())
    # inverted dropout: each feature is either 0 or doubled
    assert torch.all((out == 0) | torch.isclose(out, 2 * FEATURES))
    assert not torch.allclose(out, FEATURES)


def test_bi_head_refuses_a_single_encoding(registry):
    head = build(registry, "heads", {"name": "bi_classifier", "num_labels": 2}, 2)
    with pytest.raises(ValueError, match="bi-encoder head"):
        head(pair_example()[0])  # one Encoded (itself a tuple) is not a pair


# -- the cosine head --------------------------------------------------------------------------

def test_cosine_head_values_by_hand(registry):
    head = build(registry, "heads", {"name": "cosine", "high": 5.0}, 2).eval()
    assert head.pair_encoding == "bi" and head.output_kind == "similarity"
    assert list(head.parameters()) == []  # a plain cosine has nothing to learn
    u = vectors([1.0, 0.0], [1.0, 0.0], [3.0, 4.0], [2.0, 2.0])
    v = vectors([1.0, 1.0], [-1.0, 0.0], [4.0, 3.0], [1.0, 1.0])
    out = head((u, v))
    # cos((1,0),(1,1)) = 1/sqrt 2 ; cos((1,0),(-1,0)) = -1 ; (3,4).(4,3) / 25 = 24/25 ; parallel -> 1
    assert torch.allclose(out, torch.tensor([1 / math.sqrt(2), -1.0, 0.96, 1.0]), atol=1e-6)
    # predictions: 5 * cos clipped to [0, 5]; the negative cosine goes to low = 0
    assert torch.allclose(head.predict(out), torch.tensor([5 / math.sqrt(2), 0.0, 4.8, 5.0]), atol=1e-5)


def test_cosine_head_mean_pooling_with_padding(registry):
    head = build(registry, "heads", {"name": "cosine", "high": 5.0}, 2).eval()
    # u0 = [2,3], v0 = [1,1]: 5 / (sqrt 13 sqrt 2) ; u1 = [0,-1], v1 = [2,2]: -2 / (1 * sqrt 8)
    expected = torch.tensor([5 / math.sqrt(26), -2 / math.sqrt(8)])
    assert torch.allclose(head(pair_example()), expected, atol=1e-6)


def test_cosine_head_predict_uses_low_and_high(registry):
    head = build(registry, "heads", {"name": "cosine", "low": 1.0, "high": 4.0}, 2)
    # clamp(4 * s, 1, 4): s = -0.5 -> -2 -> 1 ; 0.1 -> 0.4 -> 1 ; 0.5 -> 2 ; 1 -> 4
    assert torch.allclose(head.predict(torch.tensor([-0.5, 0.1, 0.5, 1.0])), torch.tensor([1.0, 1.0, 2.0, 4.0]))


def test_cosine_head_affine(registry):
    head = build(registry, "heads", {"name": "cosine", "high": 5.0, "output": "affine"}, 2).eval()
    assert head.output_kind == "regression"
    # a starts at high, b at 0: the output starts as high * cos, in label units
    assert head.scale.item() == 5.0 and head.bias.item() == 0.0
    assert {n for n, _ in head.named_parameters()} == {"scale", "bias"}
    u, v = vectors([1.0, 0.0], [1.0, 0.0]), vectors([1.0, 1.0], [-1.0, 0.0])
    assert torch.allclose(head((u, v)), torch.tensor([5 / math.sqrt(2), -5.0]), atol=1e-5)
    with torch.no_grad():
        head.scale.fill_(2.0)
        head.bias.fill_(1.0)
    out = head((u, v))
    # 2 cos + 1: 2/sqrt 2 + 1 = 2.41421 ; -2 + 1 = -1
    assert torch.allclose(out, torch.tensor([math.sqrt(2) + 1, -1.0]), atol=1e-5)
    # affine predictions are the output clipped to [low, high], not multiplied again
    assert torch.allclose(head.predict(out), torch.tensor([math.sqrt(2) + 1, 0.0]), atol=1e-5)
    assert head.predict(torch.tensor([7.0, 2.5])).tolist() == [5.0, 2.5]
    # a and b learn
    (head((u, v)) ** 2).sum().backward()
    assert head.scale.grad is not None and head.bias.grad is not None


def test_cosine_head_gradient_reaches_the_encodings(registry):
    head = build(registry, "heads", {"name": "cosine", "high": 5.0}, 2)
    states = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    out = head((Encoded(states, torch.ones(1, 1)), vectors([1.0, 1.0])))
    out.sum().backward()
    # d cos(u, v) / du at u=(1,0), v=(1,1): v/(|u||v|) - cos * u/|u|^2 = (1,1)/sqrt2 - (1,0)/sqrt2 = (0, 1/sqrt 2)
    assert torch.allclose(states.grad[0, 0], torch.tensor([0.0, 1 / math.sqrt(2)]), atol=1e-6)


def test_pair_head_label_specs(registry):
    def spec(value):
        return label_spec(registry, structure_component("heads", value, registry))

    assert spec({"name": "cosine", "high": 5.0}) == LabelSpec("similarity", None, 0.0, 5.0)
    assert spec({"name": "cosine", "high": 5.0, "low": 1.0, "output": "affine"}) == \
        LabelSpec("regression", None, 1.0, 5.0)
    assert spec({"name": "bi_classifier", "num_labels": 3}) == LabelSpec("multiclass", 3)
    assert spec({"name": "bi_binary"}) == LabelSpec("binary")
    assert LabelSpec("similarity", None, 0.0, 5.0).real_valued
    for name in ("cosine", "bi_classifier", "bi_binary"):
        value = {"name": name, "high": 5.0} if name == "cosine" else {"name": name, "num_labels": 3}
        if name == "bi_binary":
            value = name
        assert pair_encoding(registry, structure_component("heads", value, registry)) == "bi"
    for name in ("classifier", "binary", "regression"):
        assert registry.get("heads", name).factory.pair_encoding == "cross"


@pytest.mark.parametrize("value, path, message", [
    ({"name": "cosine"}, "heads.high", "required"),
    ({"name": "cosine", "high": 5.0, "low": 5.0}, "heads.high", "must be greater than low"),
    ({"name": "cosine", "high": 5.0, "output": "linear"}, "heads.output", 'one of "cosine", "affine"'),
    ({"name": "cosine", "high": 5.0, "pooling": "max"}, "heads.pooling", "one of"),
    ({"name": "bi_classifier", "num_labels": 1}, "heads.num_labels", "must be >= 2"),
    ({"name": "bi_binary", "mlp": 0}, "heads.mlp", "must be >= 1"),
    ({"name": "classifier", "num_labels": 2, "mlp": 0}, "heads.mlp", "must be >= 1"),
])
def test_pair_head_option_errors(registry, value, path, message):
    with pytest.raises(SpecError) as info:
        structure_component("heads", value, registry)
    assert any(p == path and message in m for p, m in info.value.problems), info.value.problems


# -- the mlp option --------------------------------------------------------------------------

def test_mlp_none_is_one_linear_layer(registry):
    for value in ({"name": "classifier", "num_labels": 3}, "binary", "regression",
                  {"name": "bi_classifier", "num_labels": 3}, "bi_binary"):
        head = build(registry, "heads", value, 4)
        assert isinstance(head.linear, nn.Linear), value
        assert len(list(head.parameters())) == 2
    assert build(registry, "heads", {"name": "cosine", "high": 5.0}, 4).projection is None


@pytest.mark.parametrize("value, inputs, outputs", [
    ({"name": "classifier", "num_labels": 3, "mlp": 16}, 4, 3),
    ({"name": "binary", "mlp": 16}, 4, 1),
    ({"name": "regression", "mlp": 16}, 4, 1),
    ({"name": "bi_classifier", "num_labels": 3, "mlp": 16}, 16, 3),  # 4 x hidden in
    ({"name": "bi_binary", "mlp": 16}, 16, 1),
    ({"name": "cosine", "high": 5.0, "mlp": 16}, 4, 4),  # a projection of u and v, back to hidden
])
def test_mlp_shapes(registry, value, inputs, outputs):
    head = build(registry, "heads", {**value, "dropout": 0.3}, 4)
    layers = head.projection if value["name"] == "cosine" else head.linear
    assert [type(m) for m in layers] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (inputs, 16)
    assert (layers[3].in_features, layers[3].out_features) == (16, outputs)
    assert layers[2].p == 0.3  # the head's dropout, between the two layers
    torch.manual_seed(0)
    single = Encoded(torch.randn(5, 3, 4), torch.ones(5, 3))
    out = head((single, single._replace(states=torch.randn(5, 3, 4))) if head.pair_encoding == "bi" else single)
    assert out.shape == ((5, outputs) if outputs > 1 and value["name"] != "cosine" else (5,))


def test_mlp_math_by_hand(registry):
    head = build(registry, "heads", {"name": "classifier", "num_labels": 2, "pooling": "cls", "mlp": 3}, 2).eval()
    first, _, _, last = head.linear
    # first layer: h = [x0, x1, x0 - x1]; second: out = [h0 + h1, h2] + [0, 1]
    set_linear(first, [[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], [0.0, 0.0, 0.0])
    set_linear(last, [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [0.0, 1.0])
    out = head(vectors([1.0, 2.0], [0.5, -1.0]))
    # x = [1, 2]:    h = [1, 2, -1]    -> [gelu 1 + gelu 2, gelu(-1) + 1]
    # x = [0.5, -1]: h = [0.5, -1, 1.5] -> [gelu .5 + gelu(-1), gelu 1.5 + 1]
    expected = torch.tensor([[gelu(1) + gelu(2), gelu(-1) + 1], [gelu(0.5) + gelu(-1), gelu(1.5) + 1]])
    assert torch.allclose(out, expected, atol=1e-6)
    # GELU, not ReLU: gelu(-1) = -0.1587 is not 0
    assert gelu(-1) == pytest.approx(-0.15865525393145707)


def test_mlp_cosine_projection_is_shared_by_both_sentences(registry):
    head = build(registry, "heads", {"name": "cosine", "high": 5.0, "mlp": 2}, 2).eval()
    first, _, _, last = head.projection
    set_linear(first, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    set_linear(last, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    # projection = gelu, elementwise: u = (1, 0) -> (gelu 1, 0); v = (1, 1) -> (gelu 1, gelu 1)
    out = head((vectors([1.0, 0.0]), vectors([1.0, 1.0])))
    assert torch.allclose(out, torch.tensor([1 / math.sqrt(2)]), atol=1e-6)
    # u = (1, -1) -> (gelu 1, gelu -1) = (0.8413, -0.1587) ; v = (2, 1) -> (gelu 2, gelu 1) = (1.9545, 0.8413)
    g1, gm1, g2 = gelu(1), gelu(-1), gelu(2)
    expected = (g1 * g2 + gm1 * g1) / (math.hypot(g1, gm1) * math.hypot(g2, g1))
    assert expected == pytest.approx(0.8293, abs=1e-4)
    out = head((vectors([1.0, -1.0]), vectors([2.0, 1.0])))
    assert out.item() == pytest.approx(expected, abs=1e-6)
    # not projecting v would give cos((0.8413, -0.1587), (2, 1)) = 0.7961, no projection 1/sqrt 10 = 0.3162


# -- pearson loss ----------------------------------------------------------------------------

REAL = LabelSpec("regression")
SIMILAR = LabelSpec("similarity", low=0.0, high=5.0)


def test_pearson_loss_perfect_and_anti_correlation(registry):
    loss = build(registry, "losses", "pearson", REAL)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, 2.5 * x - 7).item() == pytest.approx(0.0, abs=1e-6)  # any positive affine map of the labels
    assert loss(x, -x).item() == pytest.approx(2.0, abs=1e-6)
    assert loss(x, 3 - 0.5 * x).item() == pytest.approx(2.0, abs=1e-6)


def test_pearson_loss_hand_value(registry):
    loss = build(registry, "losses", "pearson", SIMILAR)
    # x - mean = [-1, 0, 1];  y - mean = [-5/3, -2/3, 7/3]; r = 4 / (sqrt 2 * sqrt(78)/3) = 12 / sqrt 156
    value = loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0])).item()
    assert value == pytest.approx(1 - 12 / math.sqrt(156), rel=1e-5)
    assert value == pytest.approx(0.03923107716947733, rel=1e-5)


def test_pearson_loss_gradient_by_hand(registry):
    loss = build(registry, "losses", "pearson", REAL)
    # x = [1, 2], y = [1, 3]: r = 1; dr/dx_k = (yc_k - r * xc_k * sy/sx) / (n sx sy) with xc = [-.5,.5],
    # yc = [-1, 1], sx = .5, sy = 1: yc - 2 xc = 0 -> the gradient vanishes at a perfect fit
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    loss(x, torch.tensor([1.0, 3.0])).backward()
    assert torch.allclose(x.grad, torch.zeros(2), atol=1e-4)
    # x = [1, 2, 3], y = [1, 3, 2]: xc = [-1,0,1], yc = [-1,1,0], n = 3, sx = sy = sqrt(2/3), r = 1/2
    # d(1 - r)/dx = -(yc - r xc) / (n sx sy) = -([-1,1,0] - [-.5,0,.5]) / 2 = [0.25, -0.5, 0.25]
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    value = loss(x, torch.tensor([1.0, 3.0, 2.0]))
    assert value.item() == pytest.approx(0.5, abs=1e-6)
    value.backward()
    assert torch.allclose(x.grad, torch.tensor([0.25, -0.5, 0.25]), atol=1e-5)


def test_pearson_loss_batch_of_one_is_zero_with_a_graph(registry):
    loss = build(registry, "losses", "pearson", REAL)
    x = torch.tensor([0.7], requires_grad=True)
    value = loss(x, torch.tensor([3.0]))
    assert value.item() == 0.0
    value.backward()
    assert x.grad.tolist() == [0.0]
    empty = torch.zeros(0, requires_grad=True)
    loss(empty, torch.zeros(0)).backward()


def test_pearson_loss_constant_batch_is_finite(registry):
    loss = build(registry, "losses", "pearson", REAL)
    for x, y in [(torch.full((4,), 0.3), torch.tensor([1.0, 2.0, 3.0, 5.0])),
                 (torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.full((4,), 2.0)),
                 (torch.full((3,), 1.0), torch.full((3,), 1.0))]:
        x = x.clone().requires_grad_(True)
        value = loss(x, y)
        value.backward()
        assert math.isfinite(value.item()) and value.item() == pytest.approx(1.0, abs=1e-2)  # r ~ 0
        assert torch.isfinite(x.grad).all()


# -- cosine_mse ------------------------------------------------------------------------------

def test_cosine_mse_by_hand(registry):
    loss = build(registry, "losses", "cosine_mse", SIMILAR)
    # targets y / 5 = [1, 0, 0.5]; errors [0.5 - 1, -0.2 - 0, 1 - 0.5] -> squares [0.25, 0.04, 0.25]
    value = loss(torch.tensor([0.5, -0.2, 1.0]), torch.tensor([5.0, 0.0, 2.5]))
    assert value.item() == pytest.approx(0.54 / 3, rel=1e-6)
    # high comes from the label spec: with high 3, targets [1, 0, 1/3]
    three = build(registry, "losses", "cosine_mse", LabelSpec("similarity", low=0.0, high=3.0))
    value = three(torch.tensor([0.5, -0.2, 1.0]), torch.tensor([3.0, 0.0, 1.0]))
    assert value.item() == pytest.approx((0.25 + 0.04 + (2 / 3) ** 2) / 3, rel=1e-6)


def test_cosine_mse_needs_high(registry):
    with pytest.raises(PluginError, match="high"):
        build(registry, "losses", "cosine_mse", LabelSpec("similarity"))


def test_pair_loss_accepts(registry):
    multi = LabelSpec("multiclass", 5)
    assert build(registry, "losses", "pearson", REAL).accepts == {"regression", "similarity"}
    assert build(registry, "losses", "cosine_mse", SIMILAR).accepts == {"similarity"}
    assert build(registry, "losses", "ordinal", multi).accepts == {"multiclass"}
    assert build(registry, "losses", "cosent", SIMILAR).accepts == {"similarity", "regression"}


# -- ordinal log loss ------------------------------------------------------------------------

# logits chosen so the softmax is rational:
#   [0, ln 2, ln 5] -> p = [1, 2, 5] / 8      true class 0: weights |i - 0|^a = [0, 1, 2^a]
#   [ln 3, 0, 0]    -> p = [3, 1, 1] / 5      true class 1: weights |i - 1|^a = [1, 0, 1]
ORD_LOGITS = torch.tensor([[0.0, math.log(2), math.log(5)], [math.log(3), 0.0, 0.0]])
ORD_LABELS = torch.tensor([0, 1])


@pytest.mark.parametrize("alpha, expected", [
    # example 1: -(1 * ln(1 - 2/8) + 2^a * ln(1 - 5/8)) = -(ln 3/4 + 2^a ln 3/8)
    #   a = 1:   0.2876821 + 2 * 0.9808293          = 2.2493406
    #   a = 1.5: 0.2876821 + 2.8284271 * 0.9808293  = 3.0618861
    # example 2: -(ln(1 - 3/5) + ln(1 - 1/5)) = -(ln 2/5 + ln 4/5) = 0.9162907 + 0.2231436 = 1.1394343
    # mean over the batch: a = 1: (2.2493406 + 1.1394343) / 2 = 1.6943874
    #                      a = 1.5: (3.0618861 + 1.1394343) / 2 = 2.1006602
    (1.0, 1.6943874308),
    (1.5, 2.1006602098),
])
def test_ordinal_by_hand(registry, alpha, expected):
    formula = (-(math.log(3 / 4) + 2 ** alpha * math.log(3 / 8)) - (math.log(2 / 5) + math.log(4 / 5))) / 2
    assert formula == pytest.approx(expected, rel=1e-9)
    loss = build(registry, "losses", {"name": "ordinal", "alpha": alpha}, LabelSpec("multiclass", 3))
    assert loss(ORD_LOGITS, ORD_LABELS).item() == pytest.approx(expected, rel=1e-6)


def test_ordinal_default_alpha_is_one(registry):
    loss = build(registry, "losses", "ordinal", LabelSpec("multiclass", 3))
    assert loss(ORD_LOGITS, ORD_LABELS).item() == pytest.approx(1.6943874308, rel=1e-6)


def test_ordinal_true_class_contributes_nothing(registry):
    loss = build(registry, "losses", "ordinal", LabelSpec("multiclass", 3))
    # all the mass on the true class: log(1 - p_y) = log 0 is weighted by |y - y| = 0 -> loss 0, not nan
    logits = torch.tensor([[0.0, 200.0, 0.0]], requires_grad=True)
    value = loss(logits, torch.tensor([1]))
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    value.backward()
    assert torch.isfinite(logits.grad).all()
    # all the mass on a wrong class is large but finite (the clamp on 1 - p)
    logits = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    value = loss(logits, torch.tensor([2]))
    value.backward()
    assert math.isfinite(value.item()) and value.item() > 10
    assert torch.isfinite(logits.grad).all()


def test_ordinal_far_classes_cost_more(registry):
    # true class 0 of 5; half the mass stays on it, the other half goes to class 1 (near) or 4 (far)
    # loss = -ln(1 - 1/2) * distance^a (the other classes hold ~e^-30):
    #   near: ln 2 * 1 ; far: ln 2 * 4^a  (a = 1: 4 ln 2 ; a = 1.5: 8 ln 2)
    near = torch.tensor([[0.0, 0.0, -30.0, -30.0, -30.0]])
    far = torch.tensor([[0.0, -30.0, -30.0, -30.0, 0.0]])
    label = torch.tensor([0])
    for alpha, factor in [(1.0, 4.0), (1.5, 8.0)]:
        loss = build(registry, "losses", {"name": "ordinal", "alpha": alpha}, LabelSpec("multiclass", 5))
        assert loss(near, label).item() == pytest.approx(math.log(2), rel=1e-5)
        assert loss(far, label).item() == pytest.approx(factor * math.log(2), rel=1e-5)
    # cross-entropy cannot tell them apart: -ln(1/2) both times
    ce = build(registry, "losses", "cross_entropy", LabelSpec("multiclass", 5))
    assert ce(near, label).item() == pytest.approx(ce(far, label).item())


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_ordinal_alpha_must_be_positive(registry, alpha):
    with pytest.raises(SpecError, match=r"losses\.alpha: must be > 0"):
        structure_component("losses", {"name": "ordinal", "alpha": alpha}, registry)


# -- CoSENT ----------------------------------------------------------------------------------

def test_cosent_by_hand(registry):
    # y = [3, 1, 2], s = [0.8, 0.2, 0.5]. Valid pairs (i, j) with y_i > y_j and their s_j - s_i:
    #   (0, 1): 3 > 1, s_1 - s_0 = -0.6
    #   (0, 2): 3 > 2, s_2 - s_0 = -0.3
    #   (2, 1): 2 > 1, s_1 - s_2 = -0.3
    # L = log(1 + e^{-0.6 lambda} + 2 e^{-0.3 lambda})
    s, y = torch.tensor([0.8, 0.2, 0.5]), torch.tensor([3.0, 1.0, 2.0])
    one = build(registry, "losses", {"name": "cosent", "scale": 1.0}, SIMILAR)
    expected = math.log(1 + math.exp(-0.6) + 2 * math.exp(-0.3))
    assert expected == pytest.approx(1.1087105, rel=1e-6)
    assert one(s, y).item() == pytest.approx(expected, rel=1e-6)
    default = build(registry, "losses", "cosent", SIMILAR)  # lambda = 20
    assert default.scale == 20.0
    expected = math.log(1 + math.exp(-12) + 2 * math.exp(-6))
    assert default(s, y).item() == pytest.approx(expected, rel=1e-5)
    # mis-ranked: swap the scores of examples 0 and 1 -> s = [0.2, 0.8, 0.5]
    #   (0, 1): 0.6 ; (0, 2): 0.3 ; (2, 1): 0.3  -> log(1 + e^12 + 2 e^6)
    swapped = default(torch.tensor([0.2, 0.8, 0.5]), y).item()
    assert swapped == pytest.approx(math.log(1 + math.exp(12) + 2 * math.exp(6)), rel=1e-6)


def test_cosent_ties_contribute_nothing(registry):
    loss = build(registry, "losses", "cosent", SIMILAR)
    # y = [2, 2, 1], s = [0.1, 0.9, 0.5]: the tie (0, 1) is no pair, though s_1 > s_0.
    # valid: (0, 2): s_2 - s_0 = 0.4 ; (1, 2): s_2 - s_1 = -0.4  -> log(1 + e^8 + e^-8)
    value = loss(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([2.0, 2.0, 1.0])).item()
    assert value == pytest.approx(math.log(1 + math.exp(8) + math.exp(-8)), rel=1e-6)
    # counting the tie either way would add e^{20 * 0.8} = e^16 or e^-16
    assert value != pytest.approx(math.log(1 + math.exp(8) + math.exp(-8) + math.exp(16)), rel=1e-3)
    # only ties: no pair at all -> log 1 = 0, still with a graph
    s = torch.tensor([0.3, -0.4], requires_grad=True)
    value = loss(s, torch.tensor([1.0, 1.0]))
    assert value.item() == 0.0
    value.backward()
    assert s.grad.tolist() == [0.0, 0.0]


def test_cosent_perfect_ranking_is_near_zero_and_large_values_are_stable(registry):
    loss = build(registry, "losses", "cosent", SIMILAR)
    y = torch.tensor([0.0, 1.0, 2.0, 3.0])
    # 6 pairs, each s_j - s_i <= -0.6 -> each term <= e^-12: L < 6 e^-12 = 3.7e-5
    good = loss(torch.tensor([-0.9, -0.3, 0.3, 0.9]), y).item()
    assert 0 < good < 6 * math.exp(-12) * 1.01
    bad = loss(torch.tensor([0.9, 0.3, -0.3, -0.9]), y).item()
    assert bad > 30  # reversed: the largest term is e^{20 * 1.8} = e^36
    # one pair (1, 0) (y_1 > y_0) with s_0 - s_1 = 200: L = log(1 + e^4000) = 4000, where exp(4000)
    # overflows float32 but logsumexp does not; dL/ds = 20 * [1, -1] (raise s_1, lower s_0)
    huge = torch.tensor([100.0, -100.0], requires_grad=True)
    value = loss(huge, torch.tensor([0.0, 1.0]))
    assert value.item() == pytest.approx(4000.0, rel=1e-6)
    value.backward()
    assert torch.allclose(huge.grad, torch.tensor([20.0, -20.0]))


def test_cosent_scale_must_be_positive(registry):
    with pytest.raises(SpecError, match=r"losses\.scale: must be > 0"):
        structure_component("losses", {"name": "cosent", "scale": 0.0}, registry)


# -- validation through the spec -----------------------------------------------------------

def pair_task(head, loss, metrics=("pearson",), text_pair="s2"):
    data = {"train": "pairs.tsv", "text": "s1", "label": "score"}
    if text_pair:
        data["text_pair"] = text_pair
    return {"data": data, "head": head, "loss": loss, "metrics": list(metrics)}


def spec_data(**tasks):
    return {"encoder": dict(TINY_ENCODER), "train": {"epochs": 1}, "tasks": tasks}


def test_cosine_head_with_mse_is_refused(registry):
    with pytest.raises(SpecError) as info:
        structure_spec(spec_data(sts=pair_task({"name": "cosine", "high": 5.0}, "mse")), registry,
                       check_files=False)
    assert [p for p, _ in info.value.problems] == ["tasks.sts.loss"]
    assert "regression" in info.value.problems[0][1] and "similarity" in info.value.problems[0][1]


@pytest.mark.parametrize("head, loss, metrics", [
    ({"name": "cosine", "high": 5.0}, "cosine_mse", ["pearson"]),
    ({"name": "cosine", "high": 5.0}, "cosent", ["pearson", "spearman"]),
    ({"name": "cosine", "high": 5.0}, "pearson", ["spearman"]),
    ({"name": "cosine", "high": 5.0, "output": "affine"}, "mse", ["pearson"]),
    ({"name": "cosine", "high": 5.0, "output": "affine"}, {"name": "cosent", "scale": 1.0}, ["pearson"]),
    ({"name": "regression", "low": 0.0, "high": 5.0, "mlp": 64}, "pearson", ["pearson"]),
    ({"name": "bi_classifier", "num_labels": 6, "mlp": 32}, {"name": "ordinal", "alpha": 1.5}, ["accuracy"]),
    ({"name": "bi_binary"}, "bce", ["accuracy", "f1"]),
])
def test_valid_pair_specs(registry, head, loss, metrics):
    spec = structure_spec(spec_data(sts=pair_task(head, loss, metrics)), registry, check_files=False)
    assert spec.tasks["sts"].head.name == head["name"]


@pytest.mark.parametrize("head, loss, metrics, path", [
    ({"name": "cosine", "high": 5.0, "output": "affine"}, "cosine_mse", ["pearson"], "tasks.sts.loss"),
    ({"name": "cosine", "high": 5.0}, "cosent", ["accuracy"], "tasks.sts.metrics[0]"),
    ({"name": "bi_classifier", "num_labels": 3}, "cosent", ["accuracy"], "tasks.sts.loss"),
    ({"name": "bi_binary"}, "ordinal", ["accuracy"], "tasks.sts.loss"),
    ({"name": "regression"}, "cosine_mse", ["pearson"], "tasks.sts.loss"),
    ({"name": "classifier", "num_labels": 3}, "pearson", ["accuracy"], "tasks.sts.loss"),
])
def test_mismatched_pair_specs(registry, head, loss, metrics, path):
    with pytest.raises(SpecError) as info:
        structure_spec(spec_data(sts=pair_task(head, loss, metrics)), registry, check_files=False)
    assert [p for p, _ in info.value.problems] == [path]


@pytest.mark.parametrize("head", [{"name": "cosine", "high": 5.0}, {"name": "bi_classifier", "num_labels": 3},
                                  {"name": "bi_binary"}])
def test_bi_head_needs_a_text_pair(registry, head):
    loss = {"cosine": "cosine_mse", "bi_classifier": "cross_entropy", "bi_binary": "bce"}[head["name"]]
    metrics = ["pearson"] if head["name"] == "cosine" else ["accuracy"]
    with pytest.raises(SpecError) as info:
        structure_spec(spec_data(sst=pair_task(head, loss, metrics, text_pair=None)), registry, check_files=False)
    assert info.value.problems == [("tasks.sst.head", f"\"{head['name']}\" encodes sentence pairs, "
                                    "but the task has no data.text_pair")]


# -- end to end on the tiny encoder -----------------------------------------------------------

FILLER = "the a movie film plot actor scene story it was is and of very quite rather".split()


def pair_data(directory, n=96, seed=0):
    """Pairs whose score (0..3) is how many words the second sentence shares with the first."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["id\ts1\ts2\tscore\tsame"]
    for i in range(n):
        first = rng.sample(FILLER, 4)
        k = rng.randint(0, 3)
        rest = [w for w in FILLER if w not in first]
        second = first[:k] + rng.sample(rest, 4 - k)
        rng.shuffle(second)
        lines.append(f"q{i}\t{' '.join(first)}\t{' '.join(second)}\t{k}\t{int(k >= 2)}")
    (directory / "pairs.tsv").write_text("\n".join(lines) + "\n")
    (directory / "sent.tsv").write_text("id\tsentence\tlabel\n" + "\n".join(
        f"r{i}\t{' '.join(rng.sample(FILLER, 4) + ['good' if i % 2 else 'bad'])}\t{i % 2}" for i in range(n)) + "\n")
    return directory


def run_spec(registry, directory, tasks, out, epochs=2):
    data = {"name": "pairs", "seed": 5, "encoder": dict(TINY_ENCODER),
            "data": {"dir": str(directory), "max_length": 16},
            "train": {"epochs": epochs, "batch_size": 16, "lr": 3e-3}, "tasks": tasks}
    spec = structure_spec(data, registry)
    best = train(spec, registry, RunDir.create(spec, str(out)), progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return best, records


def read_predictions(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "id \t Predicted "
    return [(ident, float(value)) for ident, value in (line.split(" , ") for line in lines[1:])]


def pair_columns(label="score"):
    return {"train": "pairs.tsv", "dev": "pairs.tsv", "text": "s1", "text_pair": "s2", "label": label}


def test_cosine_head_trains_end_to_end(registry, tmp_path):
    directory = pair_data(tmp_path / "data")
    tasks = {"sim": {"data": pair_columns(), "head": {"name": "cosine", "high": 3.0},
                     "loss": "cosine_mse", "metrics": ["pearson"]}}
    best, records = run_spec(registry, directory, tasks, tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(math.isfinite(r["tasks"]["sim"]["pearson"]) for r in records)
    predictions = read_predictions(tmp_path / "run" / "predictions" / "sim-dev-output.csv")
    assert len(predictions) == 96 and predictions[0][0] == "q0"
    values = [v for _, v in predictions]
    assert all(0.0 <= v <= 3.0 for v in values)
    assert len(set(values)) > 1  # the cosine differs between pairs


def test_bi_and_cross_heads_train_together(registry, tmp_path):
    """Bi-encoded pair tasks next to a cross-encoded single-sentence task in one model."""
    directory = pair_data(tmp_path / "data")
    tasks = {
        "grade": {"data": pair_columns(), "head": {"name": "bi_classifier", "num_labels": 4, "mlp": 16},
                  "loss": {"name": "ordinal", "alpha": 1.5}, "metrics": ["accuracy"]},
        "same": {"data": pair_columns("same"), "head": "bi_binary", "loss": "bce", "metrics": ["accuracy"]},
        "rank": {"data": pair_columns(), "head": {"name": "cosine", "high": 3.0}, "loss": "cosent",
                 "metrics": ["spearman"]},
        "fit": {"data": pair_columns(), "head": {"name": "cosine", "high": 3.0, "output": "affine"},
                "loss": "pearson", "metrics": ["pearson"]},
        "sent": {"data": {"train": "sent.tsv", "dev": "sent.tsv"},
                 "head": {"name": "classifier", "num_labels": 2, "pooling": "mean", "mlp": 16},
                 "loss": "cross_entropy", "metrics": ["accuracy"]},
    }
    best, records = run_spec(registry, directory, tasks, tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert all(math.isfinite(v) for scores in record["tasks"].values() for v in scores.values())
    out = tmp_path / "run" / "predictions"
    assert {v for _, v in read_predictions(out / "grade-dev-output.csv")} <= {0.0, 1.0, 2.0, 3.0}
    assert {v for _, v in read_predictions(out / "same-dev-output.csv")} <= {0.0, 1.0}
    for task in ("rank", "fit"):
        assert all(0.0 <= v <= 3.0 for _, v in read_predictions(out / f"{task}-dev-output.csv"))
