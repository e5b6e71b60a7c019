"""focal: hand-computed values and gradients.

With logits (ln 3, 0) the softmax is (3/4, 1/4); one logit ln 3 has
sigmoid 3/4. So every case below is a power of 1/4 or 3/4 times a logarithm:

    p_t = 3/4, gamma = 2:  (1/4)^2 * ln(4/3) = 0.0625 * 0.28768207 = 0.01798013
    p_t = 1/4, gamma = 2:  (3/4)^2 * ln 4    = 0.5625 * 1.38629436 = 0.77979058
    p_t = 1/2, gamma = 2:  (1/2)^2 * ln 2    = 0.25   * 0.69314718 = 0.17328680
"""

from __future__ import annotations

import math

import pytest
import torch

from mtbert.interfaces import LabelSpec
from mtbert_focal.losses import FocalLoss, FocalOptions

LN3 = math.log(3.0)
MULTI = LabelSpec("multiclass", 2)
BINARY = LabelSpec("binary")


def focal(gamma, labels=MULTI):
    return FocalLoss(FocalOptions(gamma=gamma), labels)


def test_two_class_softmax_by_hand():
    logits = torch.tensor([[LN3, 0.0], [LN3, 0.0], [0.0, 0.0]])
    loss = focal(2.0)
    assert loss(logits[:1], torch.tensor([0])).item() == pytest.approx(0.01798013, abs=1e-7)
    assert loss(logits[1:2], torch.tensor([1])).item() == pytest.approx(0.77979058, abs=1e-7)
    assert loss(logits[2:], torch.tensor([0])).item() == pytest.approx(0.17328680, abs=1e-7)
    # the batch mean
    assert loss(logits, torch.tensor([0, 1, 0])).item() == pytest.approx(
        (0.01798013 + 0.77979058 + 0.17328680) / 3, abs=1e-7)


def test_three_classes_gamma_one():
    # logits (ln 2, 0, 0): p = (1/2, 1/4, 1/4)
    logits = torch.tensor([[math.log(2.0), 0.0, 0.0]] * 2)
    loss = FocalLoss(FocalOptions(gamma=1.0), LabelSpec("multiclass", 3))
    # class 0: (1/2) ln 2 = 0.34657359;  class 2: (3/4) ln 4 = 1.03972077
    assert loss(logits, torch.tensor([0, 2])).item() == pytest.approx((0.34657359 + 1.03972077) / 2, abs=1e-7)


def test_gamma_zero_is_cross_entropy():
    logits = torch.tensor([[LN3, 0.0]])
    assert focal(0.0)(logits, torch.tensor([0])).item() == pytest.approx(-math.log(0.75), abs=1e-7)
    assert focal(0.0)(logits, torch.tensor([1])).item() == pytest.approx(math.log(4.0), abs=1e-6)
    torch.manual_seed(0)
    many, labels = torch.randn(16, 5) * 3, torch.randint(0, 5, (16,))
    expected = torch.nn.functional.cross_entropy(many, labels)
    assert focal(0.0, LabelSpec("multiclass", 5))(many, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_binary_sigmoid_form_by_hand():
    z = torch.tensor([LN3, LN3, 0.0])
    loss = focal(2.0, BINARY)
    assert loss(z[:1], torch.tensor([1])).item() == pytest.approx(0.01798013, abs=1e-7)
    assert loss(z[1:2], torch.tensor([0])).item() == pytest.approx(0.77979058, abs=1e-7)
    assert loss(z[2:], torch.tensor([1])).item() == pytest.approx(0.17328680, abs=1e-7)


def test_gradient_by_hand():
    """d FL / dz for one logit, label 1, p = sigmoid(z):
    gamma (1-p)^gamma p ln p - (1-p)^(gamma+1); at p = 3/4, gamma = 2:
    2 * (1/16) * (3/4) * ln(3/4) - (1/4)^3 = -0.02697019 - 0.015625 = -0.04259519."""
    z = torch.tensor([LN3], requires_grad=True)
    focal(2.0, BINARY)(z, torch.tensor([1])).backward()
    assert z.grad.item() == pytest.approx(-0.04259519, abs=1e-7)
    # The softmax form of the same example: logits (ln 3, 0) differ by z, so the
    # gradient is (-g, +g) on the two logits.
    logits = torch.tensor([[LN3, 0.0]], requires_grad=True)
    focal(2.0)(logits, torch.tensor([0])).backward()
    assert logits.grad[0].tolist() == pytest.approx([-0.04259519, 0.04259519], abs=1e-7)


def test_confident_examples_stay_finite():
    # p_t = 1 in float32: 1 - p_t = 0 would give 0 * inf in the gradient of (1 - p_t)^0.5.
    logits = torch.tensor([[100.0, -100.0]], requires_grad=True)
    loss = focal(0.5)(logits, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_focusing_down_weights_easy_examples_relative_to_cross_entropy():
    logits = torch.tensor([[LN3, 0.0]])
    easy, hard = torch.tensor([0]), torch.tensor([1])
    ratio_easy = focal(2.0)(logits, easy) / focal(0.0)(logits, easy)
    ratio_hard = focal(2.0)(logits, hard) / focal(0.0)(logits, hard)
    assert ratio_easy.item() == pytest.approx(1 / 16) and ratio_hard.item() == pytest.approx(9 / 16)


def test_half_precision_output_is_computed_in_float32():
    logits = torch.tensor([[LN3, 0.0]], dtype=torch.bfloat16)
    loss = focal(2.0)(logits, torch.tensor([0]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.01798013, rel=2e-2)  # ln 3 rounded to bf16
