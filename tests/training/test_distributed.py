"""Two CPU processes on gloo train exactly like one process with the doubled batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import tomli_w
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtbert.config.spec import structure_spec, unstructure
from mtbert.testing.runs import assert_two_processes_equal_one

from helpers import ROOT, TINY_ENCODER, toy_data, toy_spec, script, mtbert, torchrun



def write_spec(registry, tmp_path, **changes):
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=64), epochs=2, log_every=1,
                                batch_size=8, lr=3e-3))
    data["encoder"] = {**TINY_ENCODER, "dropout": 0.0, "attention_dropout": 0.0}
    for task in data["tasks"].values():
        task["head"]["dropout"] = 0.0
    data.update(changes)
    structure_spec(data, registry)  # valid
    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def losses(run):
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if tag.startswith("train/loss/")}


@pytest.mark.parametrize("changes", [
    {},  # round-robin, summed loss
    {"sampler": "all_tasks", "gradient": "pcgrad"},  # per-task gradients reduced before the projection
    {"sampler": "annealed"},  # random task draws: every rank must draw the same
    # a balancer's parameters: their gradients averaged across ranks like the model's
    {"sampler": "all_tasks", "gradient": "pcgrad", "balancer": {"name": "uncertainty", "lr": 0.05}},
], ids=["round_robin", "pcgrad", "annealed", "uncertainty_pcgrad"])
def test_two_processes_equal_one_with_the_doubled_batch(registry, tmp_path, changes):
    spec = write_spec(registry, tmp_path, **{k: v for k, v in changes.items() if v is not None})
    two = torchrun("run", spec, "--out", tmp_path / "two", "--no-progress")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("done: best overall") == 1 and two.stdout.count("results in") == 1  # one rank tells
    one = mtbert("run", spec, "--out", tmp_path / "one", "--no-progress", "--set", "train.batch_size=16")
    assert one.returncode == 0, one.stderr[-3000:]

    curves_two, curves_one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert curves_two.keys() == curves_one.keys() and curves_one
    for tag in curves_one:
        steps_two, values_two = zip(*curves_two[tag])
        steps_one, values_one = zip(*curves_one[tag])
        assert steps_two == steps_one
        assert torch.allclose(torch.tensor(values_two), torch.tensor(values_one), rtol=1e-4, atol=1e-5), tag
    a = load_file(str(tmp_path / "two" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
    if "balancer" in changes:  # the learned log variances too (each built-in method: test_every_method.py)
        a = load_file(str(tmp_path / "two" / "checkpoint" / "balancers.safetensors"))
        b = load_file(str(tmp_path / "one" / "checkpoint" / "balancers.safetensors"))
        assert a.keys() == b.keys() and a
        assert any(not torch.equal(v, torch.zeros_like(v)) for v in b.values())  # something was learned
        assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), (a, b)
    metrics = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2  # written once, by the first rank


def test_the_kits_two_process_check_on_a_stateful_balancer(registry, tmp_path):
    """The plugin kit's check (mtbert.testing.runs), as an outside author runs it: FAMO's logits move
    from the global batch's losses, so two ranks train like one process with the doubled batch."""
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=64), epochs=1, log_every=1,
                                batch_size=8, lr=3e-3))
    data["encoder"] = {**TINY_ENCODER, "dropout": 0.0, "attention_dropout": 0.0}
    for task in data["tasks"].values():
        task["head"]["dropout"] = 0.0
    data.update(sampler="all_tasks", balancer="famo")
    assert_two_processes_equal_one(registry, data, tmp_path)


def test_ranks_split_each_global_batch(registry, tmp_path):
    """Each rank keeps a disjoint shard; together they are one process's doubled batch."""
    from mtbert.data.splits import TaskStream
    from mtbert.base.distributed import shard
    from mtbert.model.build import build_tasks

    spec = structure_spec(unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=40), steps=1)), registry)
    from mtbert.model.build import make
    encoder = make(registry, spec.encoder)
    split = build_tasks(spec, registry, encoder.tokenizer)["sent"].splits["train"]
    one = TaskStream(split, 16, seed=5, pad_id=0, buckets=True)
    ranks = [TaskStream(split, 8, seed=5, pad_id=0, buckets=True, rank=r, world=2) for r in (0, 1)]
    for _ in range(6):  # more than a pass: 40 rows = 16 + 16 + 8
        whole = one.next_batch()["index"].tolist()
        (first, share_0), (second, share_1) = (stream.take() for stream in ranks)
        parts = [first["index"].tolist(), second["index"].tolist()]
        assert parts[0] + parts[1] == whole and not set(parts[0]) & set(parts[1])
        assert share_0 + share_1 == 1.0 and share_0 == len(parts[0]) / len(whole)
    assert shard([1, 2, 3, 4, 5], 0, 2) == [1, 2, 3] and shard([1, 2, 3, 4, 5], 1, 2) == [4, 5]
