"""Whole runs for a plugin's tests: a tiny task pair, and the two checks every component must pass.

    from mtbert.testing.runs import toy_data, toy_spec, assert_resumes_bitwise, assert_two_processes_equal_one

- ``toy_data(directory)`` writes a binary sentiment task that hinges on one
  word and a pair-scoring task that counts a word (``sent.tsv``,
  ``pairs.tsv``); ``toy_spec(registry, directory, **train)`` is a spec that
  trains them on a 2-layer, hidden-32 encoder with MiniLM's tokenizer and
  random weights (``TINY_ENCODER``): seconds on a CPU.
- ``assert_resumes_bitwise(registry, spec, directory, at_step)``: the run
  stopped before ``at_step`` (as if killed) and resumed with ``--resume``
  ends exactly as the uninterrupted one: the same checkpoint files byte for
  byte, metrics, dev predictions and balancer weights. It holds every
  stateful part of your component to the training state's protocol.
- ``assert_two_processes_equal_one(registry, data, directory)``: two CPU
  processes under ``torchrun`` (gloo) train like one process with the
  doubled batch (losses and weights within float tolerance): your component
  averages what it keeps across processes and draws alike on every rank.

Both take the spec as mtbert builds it; ``data`` is a spec's plain data (a
dict, as ``mtbert.spec.unstructure`` gives) so that it can be written as a
TOML file for the command line.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

# A 2-layer, hidden-32 BERT with MiniLM's tokenizer and random weights: the encoder for fast tests.
TINY_ENCODER = {"name": "minbert", "pretrained": "minilm-l6", "init": "random", "num_layers": 2,
                "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}

FILLER = "the a movie film plot actor scene story it was is and of very quite rather".split()


def toy_data(directory, n: int = 192, seed: int = 0) -> Path:
    """Binary sentiment that hinges on one word, and a score that counts a word."""
    rng = random.Random(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows, pairs = ["id\tsentence\tlabel"], ["id\ts1\ts2\tscore"]
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 5) + ["good" if label else "bad"]
        rng.shuffle(words)
        rows.append(f"r{i}\t{' '.join(words)}\t{label}")
        k = rng.randint(0, 3)
        pairs.append(f"p{i}\t{' '.join(rng.sample(FILLER, 3) + ['wow'] * k)}\t{rng.choice(FILLER)}\t{k}")
    (directory / "sent.tsv").write_text("\n".join(rows) + "\n")
    (directory / "pairs.tsv").write_text("\n".join(pairs) + "\n")
    return directory


def toy_spec(registry, directory, **train):
    """The two toy tasks on the tiny encoder; ``train`` updates the [train] table."""
    from mtbert.config.spec import structure_spec

    data = {
        "name": "toy", "seed": 3,
        "encoder": dict(TINY_ENCODER),
        "data": {"dir": str(directory), "max_length": 16},
        "train": {"batch_size": 16, "lr": 3e-3, "log_every": 5, **train},
        "tasks": {
            "sent": {"data": {"train": "sent.tsv", "dev": "sent.tsv"},
                     "head": {"name": "classifier", "num_labels": 2, "pooling": "mean"},
                     "loss": "cross_entropy", "metrics": ["accuracy", "f1"]},
            "count": {"data": {"train": "pairs.tsv", "dev": "pairs.tsv", "text": "s1", "text_pair": "s2",
                               "label": "score"},
                      "head": {"name": "regression", "pooling": "mean"}, "loss": "mse", "metrics": ["pearson"]},
        },
    }
    return structure_spec(data, registry)


class Interrupted(Exception):
    """What ``interrupt_at`` raises: the run stops there as if killed."""


def interrupt_at(trainer, at_step: int) -> None:
    """Make ``trainer`` raise Interrupted when it is about to train step ``at_step``."""
    original = trainer._micro_batch

    def micro_batch(tasks):
        if trainer.step == at_step:
            raise Interrupted
        original(tasks)

    trainer._micro_batch = micro_batch


def metrics(run: Path) -> list[dict]:
    """A run's evaluations without their wall-clock times."""
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
            for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def assert_resumes_bitwise(registry, spec, directory, at_step: int) -> None:
    """The run interrupted before ``at_step`` and resumed ends byte for byte as the whole run."""
    from mtbert.runs.rundir import RunDir
    from mtbert.runs.state import peek
    from mtbert.training.loop import Trainer

    directory = Path(directory)
    whole, stopped = directory / "whole", directory / "stopped"
    Trainer(spec, registry, progress=False).fit(RunDir.create(spec, str(whole)))
    trainer = Trainer(spec, registry, progress=False)
    interrupt_at(trainer, at_step)
    try:
        trainer.fit(RunDir.create(spec, str(stopped)))
        raise AssertionError(f"the run ended before step {at_step}: choose an earlier one")
    except Interrupted:
        pass
    saved = peek(stopped / "state").get("step")
    assert saved is not None and 0 < saved <= at_step, f"no training state before step {at_step} (saved: {saved})"
    Trainer(spec, registry, progress=False).fit(RunDir.existing(stopped, spec), resume=True)
    for name in ("model.safetensors", "balancers.safetensors"):
        a, b = whole / "checkpoint" / name, stopped / "checkpoint" / name
        assert a.exists() == b.exists(), name
        if a.exists():
            assert a.read_bytes() == b.read_bytes(), f"checkpoint/{name} differs after --resume"
    assert metrics(whole) == metrics(stopped), "the evaluations differ after --resume"
    for predictions in sorted((whole / "predictions").glob("*.csv")):
        assert predictions.read_text() == (stopped / "predictions" / predictions.name).read_text(), predictions.name
    final_a, final_b = (load_file(str(r / "state" / "tensors.safetensors")) for r in (whole, stopped))
    assert final_a.keys() == final_b.keys() and all(torch.equal(final_a[k], final_b[k]) for k in final_a), \
        "the final training states differ after --resume"


def _script() -> str:
    return str(Path(sys.executable).with_name("mtbert"))


def assert_two_processes_equal_one(registry, data: dict, directory, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """``data`` (a spec's plain data, batch size B) run by two processes under torchrun trains like
    one process with batch 2B: the logged losses, the checkpoint's weights and the balancers'."""
    import tomli_w
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mtbert.config.spec import structure_spec

    directory = Path(directory)
    structure_spec(data, registry)  # valid
    path = directory / "spec.toml"
    path.write_text(tomli_w.dumps(data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MTBERT_DATA", None)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          _script(), "run", str(path), "--out", str(directory / "two"), "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    batch = data.get("train", {}).get("batch_size", 32)
    one = subprocess.run([_script(), "run", str(path), "--out", str(directory / "one"), "--no-progress",
                          "--set", f"train.batch_size={2 * batch}"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    def losses(run):
        events = EventAccumulator(str(run / "tb"))
        events.Reload()
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
                for tag in events.Tags()["scalars"] if tag.startswith("train/loss/")}

    curves_two, curves_one = losses(directory / "two"), losses(directory / "one")
    assert curves_two.keys() == curves_one.keys() and curves_one, "no training losses were logged"
    for tag in curves_one:
        steps_two, values_two = zip(*curves_two[tag])
        steps_one, values_one = zip(*curves_one[tag])
        assert steps_two == steps_one, tag
        assert torch.allclose(torch.tensor(values_two), torch.tensor(values_one), rtol=rtol, atol=atol), tag
    for name in ("model.safetensors", "balancers.safetensors"):
        a_path, b_path = directory / "two" / "checkpoint" / name, directory / "one" / "checkpoint" / name
        assert a_path.exists() == b_path.exists(), name
        if a_path.exists():
            a, b = load_file(str(a_path)), load_file(str(b_path))
            assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=rtol, atol=atol) for k in a), name
