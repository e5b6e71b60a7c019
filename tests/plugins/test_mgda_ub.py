"""MGDA-UB: the closed-form weights against Frank-Wolfe and torchjd's MGDA on orthogonal gradients,
a hand case, the update of a small model computed by hand, normalizations, steps with some of
the tasks, and the loop handing the encoder's states over as the representation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtbert.plugin.interfaces import LoopContext
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec, unstructure
from mtbert.training.loop import Trainer
from mtbert.toolkit.simplex import min_norm_weights
from mtbert_plugins.gradients.mgda_ub import orthogonal_min_norm_weights

from helpers import TINY_ENCODER, gradient_method, toy_data, toy_spec

MGDA = pytest.importorskip("torchjd.aggregation").MGDA


def test_hand_case():
    """d = (1, 4): a = (1, 1/4) / (5/4) = (0.8, 0.2); a_t d_t = 0.8 for both."""
    torch.testing.assert_close(orthogonal_min_norm_weights(torch.tensor([1.0, 4.0])), torch.tensor([0.8, 0.2]))
    # a zero gradient takes all the weight (the min norm is 0 there)
    torch.testing.assert_close(orthogonal_min_norm_weights(torch.tensor([0.0, 4.0, 1.0])),
                               torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.parametrize("seed", range(20))
def test_closed_form_is_the_min_norm_point_of_orthogonal_gradients(seed):
    """Rows with disjoint supports (as each task's rows of Z): the closed form equals Frank-Wolfe on
    their Gram matrix, and torchjd's MGDA on the rows themselves."""
    g = torch.Generator().manual_seed(seed)
    tasks = 2 + seed % 4
    jacobian = torch.zeros(tasks, 6 * tasks, dtype=torch.float64)
    for t in range(tasks):
        jacobian[t, 6 * t:6 * t + 6] = torch.randn(6, generator=g, dtype=torch.float64) * (0.2 + 3 * torch.rand(
            (), generator=g, dtype=torch.float64))
    alpha = orthogonal_min_norm_weights((jacobian ** 2).sum(1))
    torch.testing.assert_close(alpha, min_norm_weights((jacobian @ jacobian.T)[None], 2000)[0], rtol=1e-4,
                               atol=1e-6)
    expected = MGDA(epsilon=1e-30, max_iters=2000)(jacobian)
    torch.testing.assert_close(alpha @ jacobian, expected, rtol=1e-4, atol=1e-7)


class ThreeTasks(nn.Module):
    """Z_t = tanh(x_t W) (W shared), L_t = mean((Z_t v_t - y_t)^2): every loss reaches W through Z_t."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(4, 3, generator=g))
        self.heads = nn.ParameterList([nn.Parameter(torch.randn(3, generator=g)) for _ in range(3)])
        self.x = [torch.randn(5, 4, generator=g) * (1 + t) for t in range(3)]
        self.y = [torch.randn(5, generator=g) for _ in range(3)]

    def step(self, tasks):
        z = {f"t{t}": torch.tanh(self.x[t] @ self.w) for t in tasks}
        losses = {f"t{t}": ((z[f"t{t}"] @ self.heads[t] - self.y[t]) ** 2).mean() for t in tasks}
        return z, losses


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
@pytest.mark.parametrize("tasks", [(0, 1, 2), (0, 2)])
def test_update_of_a_small_model_by_hand(registry, normalization, tasks):
    model = ThreeTasks()
    z, losses = model.step(tasks)
    method = gradient_method(registry, "mgda_ub", normalization=normalization)
    names = [f"t{t}" for t in range(3)]
    representations = {k: [v] for k, v in z.items()}
    method.setup([("w", model.w)], list(model.heads), names, LoopContext())
    method.backward(losses, representations=representations)
    stats = method.finish()
    # by hand: d_t = |dL_t/dZ_t|^2, n_t from the normalization, a_t ~ n_t^2 / d_t
    model_b = ThreeTasks()
    z_b, losses_b = model_b.step(tasks)
    d = torch.stack([torch.autograd.grad(losses_b[k], z_b[k], retain_graph=True)[0].square().sum() for k in z_b])
    values = torch.stack([losses_b[k].detach() for k in z_b])
    n = {"none": torch.ones_like(d), "l2": d.sqrt(), "loss": values, "loss+": values * d.sqrt()}[normalization]
    alpha = (n ** 2 / d) / (n ** 2 / d).sum()
    if normalization == "l2":  # unit vectors, orthogonal: the mean
        torch.testing.assert_close(alpha, torch.full_like(alpha, 1 / len(tasks)))
    if normalization == "loss+":  # vectors of norm 1 / L_t: weights ~ L_t^2
        torch.testing.assert_close(alpha, values ** 2 / (values ** 2).sum())
    sum(a * loss for a, loss in zip(alpha, losses_b.values())).backward()
    torch.testing.assert_close(model.w.grad, model_b.w.grad, rtol=1e-5, atol=1e-7)
    for t in range(3):  # each head: a_t times its own gradient; an absent task's head none
        if t in tasks:
            torch.testing.assert_close(model.heads[t].grad, model_b.heads[t].grad, rtol=1e-5, atol=1e-7)
        else:
            assert model.heads[t].grad is None
    assert sorted(stats) == [f"weight/t{t}" for t in tasks]
    torch.testing.assert_close(torch.stack([stats[f"weight/t{t}"] for t in tasks]), alpha)


def test_the_loop_hands_over_the_encoders_states(registry, tmp_path):
    """In a training step, each task's representation is its batch's last-layer states, in the loss's
    graph; the method's weights are those of the closed form on their gradients."""
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=32), epochs=1, batch_size=8))
    data.update(sampler="all_tasks", gradient="mgda_ub")
    data["encoder"] = {**TINY_ENCODER, "dropout": 0.0, "attention_dropout": 0.0}
    spec = structure_spec(data, registry)
    trainer = Trainer(spec, registry, progress=False)
    parts = trainer.prepare_phase(trainer.phases[0])
    seen = {}
    original = parts.gradient.backward

    def spy(losses, representations):
        reps = representations
        seen["shapes"] = {t: [tuple(r.shape) for r in reps[t]] for t in reps}
        seen["d"] = torch.stack([sum(g.square().sum() for g in torch.autograd.grad(losses[t], reps[t],
                                                                                 retain_graph=True))
                                 for t in losses])
        original(losses, representations=representations)
    parts.gradient.backward = spy
    trainer._micro_batch(list(parts.phase.tasks))
    hidden = TINY_ENCODER["hidden_size"]
    assert set(seen["shapes"]) == {"sent", "count"}
    assert all(len(s) == 1 and s[0][0] == 8 and s[0][2] == hidden for s in seen["shapes"].values())
    assert not hasattr(trainer, "representations")  # handed to the step, not kept on the trainer
    stats = parts.gradient.finish()
    torch.testing.assert_close(torch.stack([stats["weight/sent"], stats["weight/count"]]),
                               orthogonal_min_norm_weights(seen["d"]))
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
