"""Non-finite losses: the step is skipped and counted; too many in a row stop the run cleanly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mtbert.base.errors import TrainingError
from mtbert.plugin.interfaces import Loss
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec, unstructure
from mtbert.training.loop import Trainer

from helpers import registry_with_loss, toy_data, toy_spec



class Poisoned(Loss):
    """Cross-entropy, except NaN on the calls listed in ``bad_calls`` (counted from 0)."""

    accepts = frozenset({"multiclass"})
    bad_calls: set = set()
    calls = 0

    def __init__(self, options, labels=None):
        pass

    def __call__(self, output, labels):
        loss = torch.nn.functional.cross_entropy(output.float(), labels)
        bad = Poisoned.calls in Poisoned.bad_calls
        Poisoned.calls += 1
        return loss * float("nan") if bad else loss


@pytest.fixture
def nan_registry():
    Poisoned.calls = 0
    return registry_with_loss("poisoned", Poisoned)


def single_task_spec(registry, tmp_path, optimizer="adamw", **train):
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=64), **train))
    data["tasks"] = {"sent": data["tasks"]["sent"]}
    data["tasks"]["sent"]["loss"] = "poisoned"
    data["optimizer"] = optimizer
    return structure_spec(data, registry)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", {"name": "adamw", "fused": "off"}])
def test_a_nan_step_is_skipped_and_counted(nan_registry, tmp_path, optimizer):
    Poisoned.bad_calls = {2}  # the third step's loss is NaN
    spec = single_task_spec(nan_registry, tmp_path, optimizer, steps=4, log_every=1, lr=1e-2)
    trainer = Trainer(spec, nan_registry, progress=False)
    seen = []
    original = trainer._update

    def update():
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        stats = original()
        seen.append(all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items()))
        return stats

    trainer._update = update
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    assert seen == [False, False, True, False]  # only the poisoned step left the weights alone
    assert int(trainer.health.bad_steps) == 1
    weights = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/skipped_nonfinite_steps")] == [0, 0, 1, 1]


def test_too_many_in_a_row_stop_the_run_and_keep_the_checkpoint(nan_registry, tmp_path):
    Poisoned.bad_calls = set(range(4, 1000))  # fine for 4 steps, then NaN forever
    spec = single_task_spec(nan_registry, tmp_path, steps=40, eval_every=2, log_every=3, max_bad_steps=5)
    trainer = Trainer(spec, nan_registry, progress=False)
    with pytest.raises(TrainingError) as excinfo:
        trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    message = str(excinfo.value)
    assert "steps in a row had a non-finite loss" in message and "best checkpoint so far is intact" in message
    assert trainer.step == 9  # stopped at the first check (every 3 steps) after 5 bad ones (steps 5..9)
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["step"] in (2, 4)
    weights = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())["step"] == best["step"]
