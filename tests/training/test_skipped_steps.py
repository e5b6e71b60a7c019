"""A step the loop skips (a non-finite loss or gradient) is a step that never happened.

Every stateful part of the step -- the gradient method's state (GradVac's targets, DB-MTL's
running average, Nash-MTL's weights), the balancer's (FAMO's logits and Adam moments, DWA's
epoch losses, GradNorm's first losses and weights), a regularizer's (SMART's teacher) -- is
rolled back in one place, the loop (mtbert/training/rollback.py). Here: a run with a NaN injected into
one step ends bitwise where the same run ends when the loop skips that step with finite values;
and the skipped step leaves every part's state as it was before it.
"""

from __future__ import annotations


import pytest
import torch

from mtbert.plugin.interfaces import Loss
from mtbert.training.meter import Meter
from mtbert.training.rollback import Rollback
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec, unstructure
from mtbert.training.loop import Trainer

from helpers import registry_with_loss, toy_data, toy_spec


class NaNAt(Loss):
    """Cross-entropy, times NaN on the call numbered ``NaNAt.at`` (counted from 0); None: never."""

    accepts = frozenset({"multiclass"})
    at: int | None = None
    calls = 0

    def __init__(self, options, labels=None):
        pass

    def __call__(self, output, labels):
        loss = torch.nn.functional.cross_entropy(output.float(), labels)
        poisoned = NaNAt.calls == NaNAt.at
        NaNAt.calls += 1
        return loss * float("nan") if poisoned else loss


@pytest.fixture
def nan_registry():
    return registry_with_loss("nan_at", NaNAt)


COMBINATIONS = {  # name -> (spec keys, the step that goes wrong)
    "gradvac+famo": ({"gradient": "gradvac", "balancer": "famo"}, 4),
    "db_mtl+dwa": ({"gradient": "db_mtl", "balancer": "dwa"}, 4),
    # GradNorm's first losses are taken at step 0; Nash-MTL reuses step 0's weights at step 1
    "nash_mtl+gradnorm": ({"gradient": {"name": "nash_mtl", "update_every": 2}, "balancer": "gradnorm"}, 0),
    "cagrad+uncertainty+smart": ({"gradient": "cagrad", "balancer": "uncertainty",
                                  "regularizers": [{"name": "smart", "adversarial": False}]}, 4),
    "mgda+rlw/sgd": ({"gradient": {"name": "mgda", "normalization": "loss+"}, "balancer": "rlw",
                      "optimizer": "sgd"}, 4),
}


def spec_for(registry, tmp_path, extra):
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=48), epochs=3, log_every=2))
    data["tasks"]["sent"]["loss"] = "nan_at"
    data["sampler"] = "all_tasks"
    data.update(extra)
    return structure_spec(data, registry)


def component_state(obj):
    return obj.state_dict() if hasattr(obj, "state_dict") else None


def final_state(trainer) -> dict:
    parts = trainer.parts
    return {"model": trainer.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "gradient": component_state(parts.gradient), "balancers": trainer.balancers.state_dict(),
            "regularizers": [component_state(r) for r in trainer.regularizers.values()]}


def assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    else:
        assert a == b, path


def run(registry, tmp_path, name, extra, nan_at=None, skip_at=None):
    NaNAt.calls, NaNAt.at = 0, nan_at
    spec = spec_for(registry, tmp_path / name, extra)
    trainer = Trainer(spec, registry, progress=False)
    if skip_at is not None:  # the loop skips step ``skip_at`` although everything in it is finite
        original = trainer._skipped
        trainer._skipped = lambda norm, lost: original(norm, lost) | (trainer.step == skip_at)
    trainer.fit(RunDir.create(spec, str(tmp_path / name / "run")))
    return trainer


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_a_nan_step_ends_where_a_skipped_step_ends(nan_registry, tmp_path, combination):
    """NaN in one task's loss at one step (of 9), against the same run whose loop skips that step."""
    extra, at = COMBINATIONS[combination]
    poisoned = run(nan_registry, tmp_path, "poisoned", extra, nan_at=at)
    skipped = run(nan_registry, tmp_path, "skipped", extra, skip_at=at)
    assert int(poisoned.health.bad_steps) == int(skipped.health.bad_steps) == 1
    assert_same(final_state(poisoned), final_state(skipped))
    for tensor in [t for t in torch.utils._pytree.tree_leaves(final_state(poisoned)) if isinstance(t, torch.Tensor)]:
        assert torch.isfinite(tensor.float()).all()


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_the_skipped_step_changed_no_part(nan_registry, tmp_path, combination):
    """Around the poisoned step itself: every part's state after it equals its state before it
    (random generators aside: their draws are consumed like the step's batches)."""
    extra, at = COMBINATIONS[combination]
    NaNAt.calls, NaNAt.at = 0, at
    spec = spec_for(nan_registry, tmp_path, extra)
    trainer = Trainer(spec, nan_registry, progress=False)
    seen = {}
    original = trainer._micro_batch

    def micro_batch(tasks):
        if trainer.step == at and not seen:
            seen["before"] = snapshot(trainer)
        original(tasks)

    def snapshot(t):
        state = {name: component_state(part) for name, part in t._step_parts().items()}
        state["model"] = t.model.state_dict()
        return {k: v.clone() for k, v in flatten(state).items() if "generator" not in k and "draws" not in k}

    original_update = trainer._update

    def update():
        stats = original_update()
        if trainer.step == at + 1 and "after" not in seen:
            seen["after"] = snapshot(trainer)
        return stats

    trainer._micro_batch, trainer._update = micro_batch, update
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    assert seen["before"].keys() == seen["after"].keys()
    for key, value in seen["before"].items():
        assert torch.equal(value, seen["after"][key]), key


def flatten(state, prefix="") -> dict:
    out = {}
    if isinstance(state, torch.Tensor):
        out[prefix] = state
    elif isinstance(state, dict):
        for k, v in state.items():
            out.update(flatten(v, f"{prefix}/{k}"))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(flatten(v, f"{prefix}/{i}"))
    return out


def test_rollback_restores_only_where_bad_and_only_what_it_saw():
    class Part:
        def __init__(self):
            self.kept = torch.tensor([1.0, 2.0])
            self.late = None

        def state_dict(self):
            return {"kept": self.kept, **({"late": self.late} if self.late is not None else {})}

    part, rollback = Part(), Rollback(torch.device("cpu"))
    rollback.snapshot({"p": part})
    part.kept.mul_(float("nan"))
    part.late = torch.tensor([5.0])  # came into being during the step
    rollback.restore_if(torch.tensor(True), {"p": part})
    assert torch.equal(part.kept, torch.tensor([1.0, 2.0])) and torch.equal(part.late, torch.tensor([5.0]))
    rollback.snapshot({"p": part})
    part.kept.add_(1.0)
    rollback.restore_if(torch.tensor(False), {"p": part})
    assert torch.equal(part.kept, torch.tensor([2.0, 3.0]))


def test_epoch_means_leave_out_skipped_steps():
    """DWA's input: one NaN step made the epoch's mean NaN (and DWA's weights NaN for two epochs)."""
    meter = Meter(torch.device("cpu"), lambda tensors: None)
    for value, bad in [(1.0, False), (float("nan"), True), (3.0, False)]:
        meter.add("a", torch.tensor(value), 8)
        meter.end_step(torch.tensor(bad))
    means = meter.take_epoch_means()
    assert means["a"].item() == pytest.approx(2.0)
    meter.add("a", torch.tensor(float("nan")), 8)
    meter.end_step(torch.tensor(True))
    assert torch.isnan(meter.take_epoch_means()["a"])  # nothing kept: NaN, which the loop rolls back


def test_an_epoch_with_no_kept_step_leaves_dwa_as_it_was(nan_registry, tmp_path):
    """Every step of the second epoch skipped: DWA's loss history and weights are those of before it."""
    spec = spec_for(nan_registry, tmp_path, {"balancer": "dwa"})
    trainer = Trainer(spec, nan_registry, progress=False)
    NaNAt.calls, NaNAt.at = 0, None
    original = trainer._skipped
    per_epoch = {}

    def skipped(norm, lost):
        return original(norm, lost) | (trainer.counters.epoch == 2)

    original_end = trainer._end_epoch

    def end_epoch(epoch):
        original_end(epoch)
        per_epoch[epoch] = {k: v.clone() for k, v in trainer.parts.balancer.state_dict().items()}

    trainer._skipped, trainer._end_epoch = skipped, end_epoch
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    for key in per_epoch[1]:
        assert torch.equal(per_epoch[1][key], per_epoch[2][key]), key
    assert torch.isfinite(per_epoch[3]["weights"]).all()
