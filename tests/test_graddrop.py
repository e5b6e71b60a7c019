"""GradDrop: hand cases, the sign-purity probability, and torchjd's GradDrop as the outside oracle."""

from __future__ import annotations

import pytest
import torch

from mtbert_plugins.gradients.graddrop import sign_dropout

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
    update, cancelled = sign_dropout(grads, uniform.clone(), leak=0.0)
    assert set(update.unique().tolist()) == {3.0, -1.0}
    assert (update == 3.0).float().mean().item() == pytest.approx(expected_positive, abs=1e-9)
    assert expected_positive == pytest.approx(0.75, abs=0.01)
    assert cancelled.item() == pytest.approx(0.5)  # |3 - 1| of 3 + 1 survives the sum


def test_agreeing_signs_cancel_nothing():
    _, cancelled = sign_dropout(torch.tensor([[1.0, 2.0, -1.0, 0.0], [3.0, -1.0, -2.0, 0.0]]),
                                torch.full((4,), 0.5), leak=0.0)
    assert cancelled.item() == pytest.approx(1 - (4 + 1 + 3) / (4 + 3 + 3))  # only the second coordinate


def test_leak_lets_a_fraction_of_the_dropped_side_through():
    grads = torch.tensor([[3.0], [-1.0]])
    update, _ = sign_dropout(grads, torch.tensor([0.5]), leak=0.25)  # P = 0.75 > U: keep +3
    torch.testing.assert_close(update, torch.tensor([3.0 - 0.25]))


@pytest.mark.parametrize("leak", [0.0, 0.3])
@pytest.mark.parametrize("seed", range(10))
def test_matches_torchjd_with_the_same_draws(registry, seed, leak):
    """torchjd draws U from the global generator; seeded alike, both draw the same U."""
    g = torch.Generator().manual_seed(seed)
    tasks, size = 2 + seed % 4, 50 + seed
    jacobian = torch.randn(tasks, size, generator=g)
    torch.manual_seed(seed)
    expected = GradDrop(leak=torch.full((tasks,), leak))(jacobian)
    d = aggregate(gradient_method(registry, "graddrop", seed=seed, leak=leak), jacobian)
    torch.testing.assert_close(d, expected, atol=1e-6, rtol=1e-6)


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
