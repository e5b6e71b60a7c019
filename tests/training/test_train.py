"""The loop on the tiny encoder: it learns, it is reproducible, budgets and accumulation are right."""

from __future__ import annotations

import json
import random

import torch
from safetensors.torch import load_file

from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec
from mtbert.training.loop import Trainer, train

from helpers import TINY_ENCODER, FILLER, toy_data, toy_spec, read_metrics



def run(registry, spec, path):
    return train(spec, registry, RunDir.create(spec, str(path)), progress=False)


def test_tiny_model_learns_both_tasks(registry, tmp_path):
    spec = toy_spec(registry, toy_data(tmp_path / "data"), epochs=4)
    best = run(registry, spec, tmp_path / "run")
    assert best["tasks"]["sent"]["accuracy"] > 0.9
    assert best["tasks"]["count"]["pearson"] > 0.8
    records = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["overall"] > records[0]["overall"]
    assert json.loads((tmp_path / "run" / "best.json").read_text()) == max(records, key=lambda r: r["overall"])


def test_same_seed_same_run_bitwise(registry, tmp_path):
    spec = toy_spec(registry, toy_data(tmp_path / "data"), epochs=1)
    run(registry, spec, tmp_path / "a")
    run(registry, spec, tmp_path / "b")
    timeless = [[{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(tmp_path / d)]
                for d in ("a", "b")]
    assert timeless[0] == timeless[1]
    a = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_step_budget_and_eval_every(registry, tmp_path):
    spec = toy_spec(registry, toy_data(tmp_path / "data"), steps=7, eval_every=3)
    trainer = Trainer(spec, registry, progress=False)
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    assert trainer.step == 7
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [3, 6, 7]


def test_early_stopping(registry, tmp_path):
    # A learning rate far too high makes the scores wander, so improvement stalls early.
    spec = toy_spec(registry, toy_data(tmp_path / "data"), epochs=30, lr=0.5, early_stopping=2)
    run(registry, spec, tmp_path / "run")
    overall = [r["overall"] for r in read_metrics(tmp_path / "run")]
    stalled = next(i for i in range(2, len(overall)) if max(overall[i - 1:i + 1]) <= max(overall[:i - 1]))
    assert len(overall) == stalled + 1 < 30


def test_gradient_accumulation_matches_a_bigger_batch(registry, tmp_path):
    """accumulate=2 x batch 8 takes the same optimizer steps as batch 16 (dropout off, no buckets)."""
    directory = toy_data(tmp_path / "data", n=64)
    common = dict(epochs=1, length_buckets=False)
    weights = []
    for name, extra in [("big", dict(batch_size=16)), ("acc", dict(batch_size=8, accumulate=2))]:
        spec = toy_spec(registry, directory, **common, **extra)
        spec = _without_dropout(spec)
        spec = _single_task(spec, "sent")
        trainer = Trainer(spec, registry, progress=False)
        trainer.fit(RunDir.create(spec, str(tmp_path / name)))
        assert trainer.step == 4
        weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-5), key


def _without_dropout(spec):
    import attrs

    encoder = attrs.evolve(spec.encoder, options=attrs.evolve(spec.encoder.options, dropout=0.0,
                                                              attention_dropout=0.0))
    tasks = {n: attrs.evolve(t, head=attrs.evolve(t.head, options=attrs.evolve(t.head.options, dropout=0.0)))
             for n, t in spec.tasks.items()}
    return attrs.evolve(spec, encoder=encoder, tasks=tasks)


def _single_task(spec, name):
    import attrs

    return attrs.evolve(spec, tasks={name: spec.tasks[name]})


def test_outputs_of_a_run(registry, tmp_path):
    spec = toy_spec(registry, toy_data(tmp_path / "data"), epochs=1)
    run(registry, spec, tmp_path / "run")
    out = tmp_path / "run"
    lines = (out / "predictions" / "sent-dev-output.csv").read_text().splitlines()
    assert lines[0] == "id \t Predicted " and len(lines) == 1 + 192
    ident, value = lines[1].split(" , ")
    assert ident == "r0" and value.strip() in {"0", "1"}
    assert (out / "checkpoint" / "model.safetensors").is_file()
    # round-robin over 2 tasks of 12 batches each: an epoch is 2 x 12 steps
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["step"] == 24
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_a_new_task_in_toml_alone(registry, tmp_path):
    """A JSONL task with text labels (binary sentiment) needs no code, only spec keys."""
    rng = random.Random(1)
    lines = []
    for i in range(96):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(FILLER, 4) + ["great" if label == "pos" else "awful"]
        lines.append(json.dumps({"review": " ".join(words), "sentiment": label, "uid": f"u{i}"}))
    (tmp_path / "imdb.jsonl").write_text("\n".join(lines) + "\n")
    data = {
        "name": "imdb", "encoder": dict(TINY_ENCODER), "data": {"dir": str(tmp_path), "max_length": 16},
        "train": {"epochs": 4, "batch_size": 16, "lr": 3e-3},
        "tasks": {"imdb": {
            "data": {"reader": "jsonl", "train": "imdb.jsonl", "dev": "imdb.jsonl", "text": "review",
                     "label": "sentiment", "id": "uid", "label_names": ["neg", "pos"]},
            "head": {"name": "binary", "pooling": "mean"}, "loss": "bce", "metrics": ["accuracy"]}},
    }
    spec = structure_spec(data, registry)
    best = run(registry, spec, tmp_path / "run")
    assert best["tasks"]["imdb"]["accuracy"] > 0.9
    lines = (tmp_path / "run" / "predictions" / "imdb-dev-output.csv").read_text().splitlines()
    assert lines[1].startswith("u0 , ")
