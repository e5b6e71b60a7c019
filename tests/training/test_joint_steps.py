"""Steps that hold some of the tasks, as the proportional_joint sampler makes them.

A gradient method set up for T tasks must treat a step in which only some of
them appear as it would treat those tasks alone (the absent ones add nothing
and leave no trace), and every built-in balancer and gradient method must
train under such a sampler."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from torch import nn

from mtbert.plugin.interfaces import LoopContext
from mtbert.plugin.loading import default_registry
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec, unstructure
from mtbert.training.loop import Trainer

from helpers import TINY_ENCODER, gradient_method, read_metrics, toy_data, toy_spec

_BUILT_IN = [c for c in default_registry().all() if c.package == "mtbert"]
GRADIENTS = sorted(c.name for c in _BUILT_IN if c.kind == "gradients" and c.name != "sum")
BALANCERS = sorted(c.name for c in _BUILT_IN if c.kind == "balancers")


def one_step(method, grads: dict[str, torch.Tensor], tasks: list[str], param: nn.Parameter | None = None,
             values: dict[str, float] | None = None):
    """One optimizer step of ``method`` (set up for ``tasks``) in which only ``grads``' tasks appear;
    each task's loss has gradient grads[t] with respect to one flat shared parameter and value
    values[t] (default 1)."""
    if param is None:
        param = nn.Parameter(torch.zeros(next(iter(grads.values())).shape[0]))
        method.setup([("encoder.w", param)], [], tasks, LoopContext())
    param.grad = None
    values = values or {}
    method.backward({t: (g * param).sum() - (g * param).sum().detach() + values.get(t, 1.0)
                     for t, g in grads.items()})
    method.finish()
    return param.grad.clone(), param


@pytest.mark.parametrize("name", [n for n in GRADIENTS if n != "mgda_ub"])  # its own test: a step of (t0, t2)
def test_a_step_with_some_tasks_is_those_tasks_alone(registry, name):
    g = torch.Generator().manual_seed(5)
    rows = {t: torch.randn(300, generator=g) * s for t, s in zip("abc", (1.0, 3.0, 0.5))}
    # a: the method for three tasks, stepped on (a, c), then (a, b, c), then (b, c)
    # b: fresh methods for exactly the tasks of each step
    three = gradient_method(registry, name)
    first, param = one_step(three, {"a": rows["a"], "c": rows["c"]}, ["a", "b", "c"])
    expected = one_step(gradient_method(registry, name), {"a": rows["a"], "c": rows["c"]}, ["a", "c"])[0]
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6)
    # the step after: finite, and the absent task's row did not leak into it
    second, _ = one_step(three, rows, ["a", "b", "c"], param)
    assert torch.isfinite(second).all() and second.norm() > 0
    third, _ = one_step(three, {"b": rows["b"], "c": rows["c"]}, ["a", "b", "c"], param)
    assert torch.isfinite(third).all() and third.norm() > 0


def joint_spec(registry, directory, **choice):
    """Two tasks of different sizes (48 and 16 rows, batches of 8): the small one joins a third of the
    steps, so steps hold one task or both."""
    data = unstructure(toy_spec(registry, toy_data(directory / "data", n=48), epochs=2, batch_size=8,
                                log_every=1, save_every=0))
    small = directory / "data" / "pairs-small.tsv"
    small.write_text("\n".join((directory / "data" / "pairs.tsv").read_text().splitlines()[:17]) + "\n")
    data["tasks"]["count"]["data"]["train"] = small.name
    data["encoder"] = {**TINY_ENCODER, "dropout": 0.0, "attention_dropout": 0.0}
    data.update(sampler="proportional_joint", **choice)
    return structure_spec(data, registry)


@pytest.mark.parametrize("key, name", [("gradient", n) for n in GRADIENTS] + [("balancer", n) for n in BALANCERS])
def test_every_method_trains_on_steps_with_some_tasks(registry, tmp_path, key, name):
    spec = joint_spec(registry, tmp_path, **{key: name})
    trainer = Trainer(spec, registry, progress=False)
    sizes = {len(step) for step in trainer.prepare_phase(trainer.phases[0]).sampler.plan(1)}
    assert sizes == {1, 2}
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    weights = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    # the shared encoder and both heads moved (the small task's head only in the steps it joined)
    for part in ("encoder.", "heads.sent.", "heads.count."):
        assert any(not torch.equal(weights[k], initial[k]) for k in weights if k.startswith(part)), part
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [6, 12]  # 6 steps an epoch: 48 / 8


@pytest.mark.parametrize("name", [n for n in GRADIENTS if n != "mgda_ub"])
def test_accumulated_micro_steps_with_other_subsets(registry, name):
    """Micro-steps (a, c) then (a, b, c) in one optimizer step: the rows come out of task order,
    and the update must be that of one step with the accumulated gradients of a, b and c."""
    g = torch.Generator().manual_seed(7)
    first = {t: torch.randn(300, generator=g) for t in "ac"}
    second = {t: torch.randn(300, generator=g) for t in "abc"}
    method = gradient_method(registry, name)
    param = nn.Parameter(torch.zeros(300))
    method.setup([("encoder.w", param)], [], ["a", "b", "c"], LoopContext())
    for grads in (first, second):
        method.backward({t: (v * param).sum() - (v * param).sum().detach() + 1.0 for t, v in grads.items()})
    method.finish()
    together = {t: second[t] + first.get(t, 0) for t in "abc"}
    # the losses summed over the micro-steps, for the methods that read them: a and c twice
    expected, _ = one_step(gradient_method(registry, name), together, ["a", "b", "c"],
                           values={"a": 2.0, "b": 1.0, "c": 2.0})
    torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-6)
