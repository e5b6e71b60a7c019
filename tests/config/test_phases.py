"""Phases: each its own tasks, sampler, trainable part, learning rate and length."""

from __future__ import annotations

import json

import pytest
import torch

from mtbert.base.errors import SpecError
from mtbert.config.phases import resolve_phases
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec
from mtbert.training.loop import Trainer

from helpers import TINY_ENCODER, toy_data, toy_spec



def spec_with_phases(registry, directory, phases, **train):
    spec = toy_spec(registry, directory, **train)
    data = {"name": "phased", "seed": 3, "encoder": dict(TINY_ENCODER),
            "data": {"dir": str(directory), "max_length": 16},
            "train": {"batch_size": 16, "lr": 3e-3, "log_every": 5, **train},
            "tasks": {name: _task_data(task) for name, task in spec.tasks.items()},
            "phases": phases}
    return structure_spec(data, registry)


def _task_data(task):
    from mtbert.config.spec import unstructure

    return unstructure(task)


def fit(registry, spec, path):
    trainer = Trainer(spec, registry, progress=False)
    trainer.fit(RunDir.create(spec, str(path)))
    return trainer


def test_one_implicit_phase_from_train(registry, tmp_path):
    spec = toy_spec(registry, toy_data(tmp_path / "d"), epochs=2, lr=1e-4, head_lr=1e-3)
    [phase] = resolve_phases(spec)
    assert (phase.epochs, phase.steps, phase.lr, phase.head_lr, phase.trainable) == (2, None, 1e-4, 1e-3, "all")
    assert phase.tasks == ["sent", "count"] and phase.sampler.name == "round_robin"


def test_phases_fall_back_to_the_top_level(registry, tmp_path):
    spec = spec_with_phases(registry, toy_data(tmp_path / "d"), [
        {"name": "heads", "trainable": "heads", "lr": 1e-3, "epochs": 1},
        {"tasks": ["count"], "steps": 5, "sampler": "proportional"},
    ], head_lr=5e-3)
    first, second = resolve_phases(spec)
    assert (first.name, first.lr, first.head_lr, first.trainable) == ("heads", 1e-3, None, "heads")
    assert (second.name, second.lr, second.head_lr, second.tasks) == ("phase2", 3e-3, 5e-3, ["count"])
    assert second.sampler.name == "proportional" and first.sampler.name == "round_robin"


@pytest.mark.parametrize("phases, path, words", [
    ([{"trainable": "heads"}], "phases[0].epochs", "give each phase its length"),
    ([{"epochs": 1, "steps": 3}], "phases[0].epochs", "give each phase its length"),
    ([{"epochs": 1, "tasks": ["nli"]}], "phases[0].tasks", "unknown task 'nli'"),
    ([{"epochs": 1, "trainable": "adapters"}], "phases[0].trainable", "no adapters"),
    ([{"epochs": 1, "trainable": "everything"}], "phases[0].trainable", "expected one of"),
])
def test_phase_mistakes(registry, tmp_path, phases, path, words):
    with pytest.raises(SpecError) as excinfo:
        spec_with_phases(registry, toy_data(tmp_path / "d"), phases)
    found = dict(excinfo.value.problems)
    assert path in found and words in found[path], found


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, after, prefix):
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


def test_heads_only_then_full(registry, tmp_path):
    """Report 001's transfer: heads on a frozen encoder, then everything, in one run."""
    spec = spec_with_phases(registry, toy_data(tmp_path / "d"), [
        {"name": "heads", "trainable": "heads", "lr": 1e-2, "steps": 6},
        {"name": "full", "trainable": "all", "lr": 1e-3, "steps": 4},
    ])
    trainer = Trainer(spec, registry, progress=False)
    start = snapshot(trainer.model)
    original_phase = trainer._train_phase

    after_heads = {}

    def spy():
        original_phase()
        after_heads.setdefault(trainer.parts.phase.name, snapshot(trainer.model))

    trainer._train_phase = spy
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    heads_done = after_heads["heads"]
    assert changed(start, heads_done, "encoder.") == set()
    assert changed(start, heads_done, "heads.")
    assert changed(heads_done, after_heads["full"], "encoder.")
    assert trainer.step == 10
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in records] == [("heads", 6), ("full", 10)]
    assert [g["lr"] for g in trainer.parts.optimizer.param_groups][0] == pytest.approx(0.0)  # linear decay ended


def test_last_layers_trains_only_the_top(registry, tmp_path):
    spec = spec_with_phases(registry, toy_data(tmp_path / "d"), [
        {"trainable": "last_layers", "last_layers": 1, "steps": 4}])
    trainer = Trainer(spec, registry, progress=False)
    start = snapshot(trainer.model)
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    end = snapshot(trainer.model)
    assert changed(start, end, "encoder.embeddings.") == set()
    assert changed(start, end, "encoder.layers.0.") == set()
    assert changed(start, end, "encoder.layers.1.") and changed(start, end, "heads.")


def test_sequential_phase_trains_one_task_first(registry, tmp_path):
    """Report 003's sequential learning: a phase on one task before the multitask phase."""
    spec = spec_with_phases(registry, toy_data(tmp_path / "d"), [
        {"name": "count-first", "tasks": ["count"], "steps": 5},
        {"name": "together", "steps": 4}])
    trainer = Trainer(spec, registry, progress=False)
    start = snapshot(trainer.model)
    seen = []
    original = trainer._micro_batch
    trainer._micro_batch = lambda tasks: (seen.append((trainer.parts.phase.name, tuple(tasks))), original(tasks))[1]
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    assert {t for p, t in seen if p == "count-first"} == {("count",)}
    assert {t for p, t in seen if p == "together"} == {("sent",), ("count",)}
    assert changed(start, snapshot(trainer.model), "heads.count.")
