"""GradDrop: hand cases, the sign-purity probability, and torchjd's GradDrop as the outside oracle."""

from __future__ import annotations

import pytest
import torch

from mtbert_plugins.gradients.graddrop import sign_dropout, signed_draws

from helpers import aggregate, gradient_method

GradDrop = pytest.importorskip("torchjd.aggregation").GradDrop


def test_agreeing_coordinates_pass_whole_and_conflicting_ones_keep_one_sign(registry):
    """Coordinate 0: both +1 (P = 1) -> 2. Coordinate 1: +1 and -1 (P = 1/2) -> +1 or -1."""
    m = gradient_method(registry, "graddrop")
    seen = set()
    for _ in range(40):
        d = aggregate(m, torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        assert d[0].item() == 2.0
        seen.add(d[1].item())
    assert seen == {1.0, -1.0}


def test_keeps_the_positive_side_with_probability_p():
    """g = (+3, -1) on one coordinate: P = (1 + 2/4) / 2 = 0.75; the update is +3 where U < P."""
    grads = torch.tensor([[3.0], [-1.0]]).expand(2, 20000).contiguous()
    uniform = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    expected_positive = (uniform < 0.75).float().mean().item()
    update, cancelled = sign_dropout(grads, uniform * 2 - 1, leak=0.0)
    assert set(update.unique().tolist()) == {3.0, -1.0}
    assert (update == 3.0).float().mean().item() == pytest.approx(expected_positive, abs=1e-9)
    assert expected_positive == pytest.approx(0.75, abs=0.01)
    assert cancelled.item() == pytest.approx(0.5)  # |3 - 1| of 3 + 1 survives the sum


def test_agreeing_signs_cancel_nothing():
    _, cancelled = sign_dropout(torch.tensor([[1.0, 2.0, -1.0, 0.0], [3.0, -1.0, -2.0, 0.0]]),
                                torch.zeros(4), leak=0.0)
    assert cancelled.item() == pytest.approx(1 - (4 + 1 + 3) / (4 + 3 + 3))  # only the second coordinate


def test_leak_lets_a_fraction_of_the_dropped_side_through():
    grads = torch.tensor([[3.0], [-1.0]])
    update, _ = sign_dropout(grads, torch.tensor([0.0]), leak=0.25)  # P = 0.75 > U = 0.5: keep +3
    torch.testing.assert_close(update, torch.tensor([3.0 - 0.25]))


@pytest.mark.parametrize("leak", [0.0, 0.3])
@pytest.mark.parametrize("seed", range(10))
def test_matches_torchjd_with_the_same_draws(registry, monkeypatch, seed, leak):
    """torchjd draws U with torch.rand; handed the U that mtbert drew, it must give mtbert's update."""
    g = torch.Generator().manual_seed(seed)
    tasks, size = 2 + seed % 4, 50 + seed
    jacobian = torch.randn(tasks, size, generator=g)
    method = gradient_method(registry, "graddrop", seed=seed, leak=leak)
    d = aggregate(method, jacobian)
    # the same draws again: the method's generator from its seed, over its whole (padded) flat vector
    bits = torch.empty((method.size + 1) // 2, dtype=torch.int64)
    uniform = (signed_draws(bits, torch.Generator().manual_seed(seed))[:size].double() * 2.0**-31 + 1) / 2
    monkeypatch.setattr(torch, "rand", lambda shape, dtype, device: uniform.to(dtype).reshape(shape))
    expected = GradDrop(leak=torch.full((tasks,), leak))(jacobian)
    torch.testing.assert_close(d, expected, atol=1e-6, rtol=1e-6)


def test_signed_draws_have_the_law_of_2u_minus_1():
    """On torch.rand's grid (multiples of 2^-23 from -1, below 1), uniform: the quantiles of 2^20
    draws within a few standard errors (~0.001) of a uniform's, and every one of 64 equal bins hit
    about equally."""
    bits = torch.empty(2**19, dtype=torch.int64)
    v = signed_draws(bits, torch.Generator().manual_seed(0)).double() * 2.0**-31
    assert v.numel() == 2**20
    assert v.min() >= -1 and v.max() <= 1 - 2.0**-23
    assert torch.equal(torch.frac((v + 1) * 2**23), torch.zeros_like(v))  # on the grid
    q = torch.tensor([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99], dtype=torch.float64)
    torch.testing.assert_close(torch.quantile(v[:2**16], q), 2 * q - 1, atol=0.01, rtol=0)
    counts = torch.histc(v.float(), bins=64, min=-1, max=1)
    assert (counts / counts.mean() - 1).abs().max() < 0.05  # 16,384 per bin, std 0.8%


def test_draws_resume(registry):
    grads = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    m = gradient_method(registry, "graddrop")
    aggregate(m, grads)
    state = m.state_dict()
    later = aggregate(m, grads)
    other = gradient_method(registry, "graddrop")
    aggregate(other, grads)
    other.load_state_dict(state)
    torch.testing.assert_close(aggregate(other, grads), later)
    assert not torch.equal(later, aggregate(m, grads))  # new draws each step
