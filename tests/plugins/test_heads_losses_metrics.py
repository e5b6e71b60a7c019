"""Heads, losses and metrics: the math on small hand-computed cases.

Every component is built the way the core builds it: spec data ->
``structure_component`` -> ``make`` through the registry.
"""

from __future__ import annotations

import math

import pytest
import torch

from mtbert.model.build import Task, label_spec, make
from mtbert.base.errors import SpecError
from mtbert.training.prediction import overall, score
from mtbert.plugin.interfaces import Encoded, LabelSpec
from mtbert.model.pooling import pool
from mtbert.config.spec import structure_component


def build(registry, kind, value, *args):
    return make(registry, structure_component(kind, value, registry), *args)


def encoded_example() -> Encoded:
    """Two sequences of length 3, hidden size 2; the first has one padding token."""
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],  # last token is padding
                           [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = torch.tensor([[0.25, -0.5], [0.75, 1.0]])
    return Encoded(states, mask, pooled)


def set_linear(head, weight, bias):
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor(weight))
        head.linear.bias.copy_(torch.tensor(bias))


# -- pooling -------------------------------------------------------------------------------

def test_pool_cls_takes_first_token():
    assert torch.equal(pool(encoded_example(), "cls"), torch.tensor([[1.0, 2.0], [5.0, 6.0]]))


def test_pool_mean_ignores_padding():
    # sequence 1: mean of the 2 real tokens ([1,2] + [3,4]) / 2 = [2, 3]  (the padding [100,-100] is ignored)
    # sequence 2: ([5,6] + [7,8] + [9,10]) / 3 = [7, 8]
    assert torch.allclose(pool(encoded_example(), "mean"), torch.tensor([[2.0, 3.0], [7.0, 8.0]]))


def test_pool_pooler_returns_encoder_pooled_and_needs_one():
    enc = encoded_example()
    assert torch.equal(pool(enc, "pooler"), enc.pooled)
    with pytest.raises(ValueError, match="no pooler"):
        pool(enc._replace(pooled=None), "pooler")
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(enc, "max")


# -- heads ---------------------------------------------------------------------------------

def test_classifier_shape_pooling_and_argmax(registry):
    head = build(registry, "heads", {"name": "classifier", "num_labels": 3, "pooling": "mean"}, 2).eval()
    set_linear(head, [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 0.0, -4.0])
    out = head(encoded_example())
    # mean-pooled [2,3] -> [2, 3, 2+3-4=1];  [7,8] -> [7, 8, 7+8-4=11]
    assert out.shape == (2, 3)
    assert torch.allclose(out, torch.tensor([[2.0, 3.0, 1.0], [7.0, 8.0, 11.0]]))
    assert head.predict(out).tolist() == [1, 2]


def test_classifier_cls_pooling(registry):
    head = build(registry, "heads", {"name": "classifier", "num_labels": 2, "pooling": "cls"}, 2).eval()
    set_linear(head, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    # cls vectors are [1,2] and [5,6]
    assert torch.allclose(head(encoded_example()), torch.tensor([[1.0, 2.0], [5.0, 6.0]]))


def test_binary_head_one_logit_and_threshold_at_zero(registry):
    head = build(registry, "heads", {"name": "binary", "pooling": "mean"}, 2).eval()
    set_linear(head, [[1.0, -0.5]], [-1.0])
    out = head(encoded_example())
    # [2,3]: 2 - 1.5 - 1 = -0.5 ;  [7,8]: 7 - 4 - 1 = 2
    assert out.shape == (2,)
    assert torch.allclose(out, torch.tensor([-0.5, 2.0]))
    assert head.predict(out).tolist() == [0, 1]
    # logit > 0 strictly: exactly 0 is the negative class
    assert head.predict(torch.tensor([0.0, 1e-6, -1e-6])).tolist() == [0, 1, 0]


def test_regression_head_pooler_and_clipping(registry):
    head = build(registry, "heads", {"name": "regression", "pooling": "pooler", "low": 0.0, "high": 5.0}, 2).eval()
    set_linear(head, [[2.0, 1.0]], [0.5])
    out = head(encoded_example())
    # pooled [0.25,-0.5]: 0.5 - 0.5 + 0.5 = 0.5 ; [0.75, 1]: 1.5 + 1 + 0.5 = 3
    assert out.shape == (2,)
    assert torch.allclose(out, torch.tensor([0.5, 3.0]))
    assert head.predict(torch.tensor([-1.0, 2.5, 7.0])).tolist() == [0.0, 2.5, 5.0]


def test_regression_head_without_range_does_not_clip(registry):
    head = build(registry, "heads", "regression", 2)
    assert head.predict(torch.tensor([-1.0, 2.5, 7.0])).tolist() == [-1.0, 2.5, 7.0]


def test_head_label_specs(registry):
    def spec(value):
        return label_spec(registry, structure_component("heads", value, registry))

    assert spec({"name": "classifier", "num_labels": 5}) == LabelSpec("multiclass", 5)
    assert spec("binary") == LabelSpec("binary", None)
    assert spec({"name": "regression", "low": 0.0, "high": 5.0}) == LabelSpec("regression", None, 0.0, 5.0)
    assert spec("regression") == LabelSpec("regression")


def test_dropout_inactive_in_eval_mode(registry):
    head = build(registry, "heads", {"name": "classifier", "num_labels": 3, "dropout": 0.9}, 2)
    set_linear(head, [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 0.0, 0.0])
    enc = encoded_example()
    head.eval()
    first, second = head(enc), head(enc)
    assert torch.equal(first, second)
    # no inverted-dropout scaling in eval: plain linear on the cls vectors [1,2], [5,6]
    assert torch.allclose(first, torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 11.0]]))
    head.train()
    assert not torch.equal(head(enc), first)  # dropout 0.9 does change training outputs


@pytest.mark.parametrize("value, path, message", [
    ({"name": "regression", "low": 0.0}, "heads.low", "give both low and high"),
    ({"name": "regression", "high": 5.0}, "heads.low", "give both low and high"),
    ({"name": "regression", "low": 5.0, "high": 5.0}, "heads.high", "must be greater than low"),
    ({"name": "classifier", "num_labels": 1}, "heads.num_labels", "must be >= 2"),
    ({"name": "binary", "dropout": 1.0}, "heads.dropout", "must be in [0, 1)"),
])
def test_head_option_errors_name_their_path(registry, value, path, message):
    with pytest.raises(SpecError) as info:
        structure_component("heads", value, registry)
    assert any(p == path and message in m for p, m in info.value.problems), info.value.problems
    assert f"{path}: {message}" in str(info.value)


def test_head_option_error_uses_given_path(registry):
    with pytest.raises(SpecError, match=r"tasks\.sts\.head\.low: give both low and high"):
        structure_component("heads", {"name": "regression", "low": 0.0}, registry, "tasks.sts.head")


# -- losses --------------------------------------------------------------------------------

# logits chosen so the softmax is rational:
#   [0, ln 2, ln 5] -> p = [1, 2, 5] / 8       (label 2: p = 5/8)
#   [ln 3, 0, 0]    -> p = [3, 1, 1] / 5       (label 0: p = 3/5)
CE_LOGITS = torch.tensor([[0.0, math.log(2), math.log(5)], [math.log(3), 0.0, 0.0]])
CE_LABELS = torch.tensor([2, 0])


def test_cross_entropy_hand_value(registry):
    loss = build(registry, "losses", "cross_entropy")
    # (-ln(5/8) - ln(3/5)) / 2 = (0.4700036 + 0.5108256) / 2
    expected = 0.49041462650586315
    assert loss(CE_LOGITS, CE_LABELS).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_label_smoothing_hand_value(registry):
    eps = 0.1
    loss = build(registry, "losses", {"name": "cross_entropy", "label_smoothing": eps})
    ce = 0.49041462650586315
    # mean over classes of -ln p_c:
    #   example 1: -(ln 1/8 + ln 2/8 + ln 5/8) / 3 = ln 8 - ln(10)/3 = 1.3119132
    #   example 2: -(ln 3/5 + 2 ln 1/5) / 3     = ln 5 - ln(3)/3  = 1.2432338
    uniform = ((math.log(8) - math.log(10) / 3) + (math.log(5) - math.log(3) / 3)) / 2
    assert uniform == pytest.approx(1.277573496779942)
    expected = (1 - eps) * ce + eps * uniform  # = 0.5691305135
    assert expected == pytest.approx(0.569130513533271)
    assert loss(CE_LOGITS, CE_LABELS).item() == pytest.approx(expected, rel=1e-6)


def test_bce_hand_values(registry):
    # logits [0, ln 3] -> sigmoid [1/2, 3/4]; labels [1, 0]
    # terms: -ln(1/2) = ln 2 ; -ln(1 - 3/4) = ln 4 = 2 ln 2  -> mean 1.5 ln 2
    logits, labels = torch.tensor([0.0, math.log(3)]), torch.tensor([1, 0])
    plain = build(registry, "losses", "bce")
    assert plain(logits, labels).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    # pos_weight 3 multiplies the positive term: (3 ln 2 + 2 ln 2) / 2 = 2.5 ln 2
    weighted = build(registry, "losses", {"name": "bce", "pos_weight": 3.0})
    assert weighted(logits, labels).item() == pytest.approx(2.5 * math.log(2), rel=1e-6)


def test_bce_pos_weight_must_be_positive(registry):
    with pytest.raises(SpecError, match=r"losses\.pos_weight"):
        structure_component("losses", {"name": "bce", "pos_weight": 0.0}, registry)


def test_mse_hand_value(registry):
    loss = build(registry, "losses", "mse")
    # ((1 - 1.5)^2 + (2 - 2)^2 + (4 - 2)^2) / 3 = (0.25 + 0 + 4) / 3
    value = loss(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.5, 2, 2]))
    assert value.item() == pytest.approx(4.25 / 3, rel=1e-6)


def test_loss_accepts(registry):
    assert build(registry, "losses", "cross_entropy").accepts == {"multiclass"}
    assert build(registry, "losses", "bce").accepts == {"binary"}
    assert build(registry, "losses", "mse").accepts == {"regression"}


def test_losses_are_differentiable(registry):
    # d/dz mean(CE) = (softmax - onehot) / batch; for example 2: ([3,1,1]/5 - [1,0,0]) / 2
    logits = CE_LOGITS.clone().requires_grad_(True)
    build(registry, "losses", "cross_entropy")(logits, CE_LABELS).backward()
    assert torch.allclose(logits.grad[1], torch.tensor([-0.2, 0.1, 0.1]), atol=1e-6)


# -- metrics -------------------------------------------------------------------------------

MULTI = LabelSpec("multiclass", 4)
BINARY = LabelSpec("binary")
REGRESSION = LabelSpec("regression")


def test_accuracy(registry):
    acc = build(registry, "metrics", "accuracy", MULTI)
    assert acc(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 2, 2, 1])) == pytest.approx(0.75)
    assert acc.normalized(0.75) == pytest.approx(0.75)


def test_f1_macro_leaves_out_absent_class(registry):
    f1 = build(registry, "metrics", "f1", MULTI)  # 4 classes; class 3 never predicted nor present
    preds = torch.tensor([0, 0, 1, 1, 2, 0])
    labels = torch.tensor([0, 1, 1, 2, 2, 0])
    # class 0: tp 2 (idx 0,5), fp 1 (idx 1), fn 0 -> 2*2/(4+1+0) = 0.8
    # class 1: tp 1 (idx 2), fp 1 (idx 3), fn 1 (idx 1) -> 2/(2+1+1) = 0.5
    # class 2: tp 1 (idx 4), fp 0, fn 1 (idx 3)          -> 2/(2+0+1) = 2/3
    # class 3: absent everywhere -> left out of the mean
    expected = (0.8 + 0.5 + 2 / 3) / 3
    assert f1(preds, labels) == pytest.approx(expected)
    assert f1(preds, labels) != pytest.approx((0.8 + 0.5 + 2 / 3) / 4)


def test_f1_macro_counts_present_but_missed_class_as_zero(registry):
    f1 = build(registry, "metrics", "f1", LabelSpec("multiclass", 3))
    # class 0: tp 1, fp 1, fn 0 -> 2/3 ; class 1: tp 0, fp 0, fn 1 -> 0 ; class 2 absent
    assert f1(torch.tensor([0, 0]), torch.tensor([1, 0])) == pytest.approx((2 / 3 + 0) / 2)


def test_f1_binary_is_positive_class(registry):
    f1 = build(registry, "metrics", "f1", BINARY)
    preds = torch.tensor([1, 1, 0, 0, 1])
    labels = torch.tensor([1, 0, 1, 0, 1])
    # positive class: tp 2 (idx 0,4), fp 1 (idx 1), fn 1 (idx 2) -> 4/6
    # (the macro over both classes would be (2/3 + 1/2) / 2 = 0.583)
    assert f1(preds, labels) == pytest.approx(2 / 3)


def test_pearson_hand_value(registry):
    r = build(registry, "metrics", "pearson", REGRESSION)
    # x - mean = [-1, 0, 1];  y = [1,2,5], mean 8/3, y - mean = [-5/3, -2/3, 7/3]
    # dot = 5/3 + 7/3 = 4 ; |x| = sqrt 2 ; |y| = sqrt(78)/3  -> r = 12 / sqrt(156) = 0.96077
    value = r(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0]))
    assert value == pytest.approx(12 / math.sqrt(156), rel=1e-9)
    assert value == pytest.approx(0.9607689228305227, rel=1e-9)
    # order of arguments does not matter, and anti-correlation is negative
    assert r(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(value)
    assert r(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 5.0])) == pytest.approx(-value)


def test_pearson_of_constant_is_zero(registry):
    r = build(registry, "metrics", "pearson", REGRESSION)
    assert r(torch.full((4,), 2.5), torch.tensor([1.0, 2.0, 3.0, 5.0])) == 0.0
    # a value not exactly representable: centring may leave rounding noise, but r stays ~0
    assert r(torch.full((3,), 0.1), torch.tensor([1.0, 2.0, 5.0])) == pytest.approx(0.0, abs=1e-9)
    assert r(torch.tensor([1.0, 2.0, 5.0]), torch.full((3,), 3.0)) == 0.0


def test_spearman_with_ties_uses_average_ranks(registry):
    rho = build(registry, "metrics", "spearman", REGRESSION)
    x = torch.tensor([1.0, 2.0, 2.0, 3.0])
    y = torch.tensor([10.0, 20.0, 40.0, 30.0])
    # ranks x = [1, 2.5, 2.5, 4], ranks y = [1, 2, 4, 3]
    # centred: [-1.5, 0, 0, 1.5] and [-1.5, -0.5, 1.5, 0.5]; dot = 2.25 + 0.75 = 3
    # norms sqrt(4.5), sqrt(5) -> rho = 3 / sqrt(22.5) = 0.63246
    # (ordinal ranks [1,2,3,4] for x would give 4/5 = 0.8)
    assert rho(x, y) == pytest.approx(3 / math.sqrt(22.5), rel=1e-9)
    # monotone but non-linear -> 1
    assert rho(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 10.0, 100.0, 1000.0])) == pytest.approx(1.0)


def test_ranks_average_ties():
    from mtbert_plugins.metrics.correlation import ranks

    assert ranks(torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_correlation_normalized_maps_to_unit_interval(registry):
    for name in ("pearson", "spearman"):
        metric = build(registry, "metrics", name, REGRESSION)
        assert metric.normalized(-1.0) == pytest.approx(0.0)
        assert metric.normalized(1.0) == pytest.approx(1.0)
        assert metric.normalized(0.6) == pytest.approx((0.6 + 1) / 2)


def test_metric_accepts(registry):
    assert build(registry, "metrics", "accuracy", MULTI).accepts == {"multiclass", "binary"}
    assert build(registry, "metrics", "f1", MULTI).accepts == {"multiclass", "binary"}
    assert build(registry, "metrics", "pearson", REGRESSION).accepts == {"regression", "similarity"}
    assert build(registry, "metrics", "spearman", REGRESSION).accepts == {"regression", "similarity"}


# -- the overall score ---------------------------------------------------------------------

def _task(registry, name, metric_names, labels):
    metrics = {m: build(registry, "metrics", m, labels) for m in metric_names}
    return Task(name, 1.0, None, metrics, labels, {}, "Predicted")


def test_overall_is_the_course_formula(registry):
    tasks = {
        "sst": _task(registry, "sst", ["accuracy", "f1"], LabelSpec("multiclass", 5)),
        "para": _task(registry, "para", ["accuracy"], BINARY),
        "sts": _task(registry, "sts", ["pearson", "spearman"], REGRESSION),
    }
    scores = {
        # accuracy 3/4
        "sst": score(tasks["sst"], torch.tensor([0, 1, 2, 1]), torch.tensor([0, 2, 2, 1])),
        # accuracy 3/5
        "para": score(tasks["para"], torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 1, 0, 1])),
        # r = 12 / sqrt(156)
        "sts": score(tasks["sts"], torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0])),
    }
    assert scores["sst"]["accuracy"] == pytest.approx(0.75)
    assert scores["para"]["accuracy"] == pytest.approx(0.6)
    sts_r = scores["sts"]["pearson"]
    assert sts_r == pytest.approx(12 / math.sqrt(156))
    # (sst_acc + para_acc + (sts_r + 1) / 2) / 3 = (0.75 + 0.6 + 0.98038) / 3 = 0.77679
    expected = (0.75 + 0.6 + (sts_r + 1) / 2) / 3
    assert expected == pytest.approx(0.7767948204717539)
    assert overall(tasks, scores) == pytest.approx(expected)


def test_overall_uses_each_tasks_first_metric(registry):
    tasks = {
        "sst": _task(registry, "sst", ["f1", "accuracy"], LabelSpec("multiclass", 5)),
        "sts": _task(registry, "sts", ["spearman", "pearson"], REGRESSION),
    }
    scores = {"sst": {"f1": 0.4, "accuracy": 0.9}, "sts": {"spearman": 0.2, "pearson": -0.8}}
    # f1 0.4 and spearman (0.2 + 1) / 2 = 0.6 -> 0.5
    assert overall(tasks, scores) == pytest.approx((0.4 + 0.6) / 2)
