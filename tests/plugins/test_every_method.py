"""Every balancer and gradient method that mtbert ships, under the loop's hard conditions:
bf16 autocast with gradient accumulation, interrupted and resumed (bitwise on the CPU), and on
two gloo processes (equal to one process with the doubled batch). The list comes from the
registry, so a new built-in method is covered the day it lands.

The two-process side runs every method in one ``mtbert sweep`` under torchrun (and the
one-process side in one plain sweep): four process starts in all instead of two per method,
and a check that sweeps work under torchrun."""

from __future__ import annotations

import json

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from mtbert.plugin.loading import default_registry
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec, unstructure
from mtbert.training.loop import Trainer

from helpers import TINY_ENCODER, Interrupted, interrupt_at, mtbert, read_metrics, toy_data, toy_spec, torchrun

_BUILT_IN = [c for c in default_registry().all() if c.package == "mtbert"]
KEY = {"balancers": "balancer", "gradients": "gradient"}
NAMES = {kind: sorted(c.name for c in _BUILT_IN if c.kind == kind) for kind in KEY}
METHODS = [(kind, name) for kind in KEY for name in NAMES[kind]]


def spec_data(registry, directory, **train):
    train = {"epochs": 2, "batch_size": 8, "accumulate": 2, "precision": "bf16", "save_every": 2,
             "log_every": 1, "lr": 3e-3, **train}
    data = unstructure(toy_spec(registry, toy_data(directory / "data", n=48), **train))
    data["encoder"] = {**TINY_ENCODER, "dropout": 0.0, "attention_dropout": 0.0}
    for task in data["tasks"].values():
        task["head"]["dropout"] = 0.0
    data["sampler"] = "all_tasks"
    return data


def tensors(path, name):
    file = path / "checkpoint" / name
    return load_file(str(file)) if file.exists() else {}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Every method trained on two gloo processes (batch 8 each) and on one (batch 16), fp32: bf16's
    rounding depends on the batch's shape, which is what differs between the two."""
    root = tmp_path_factory.mktemp("sweeps")
    path = root / "spec.toml"
    path.write_text(tomli_w.dumps(spec_data(default_registry(), root, precision="fp32")))
    for kind, key in KEY.items():
        grid = f"{key}={','.join(NAMES[kind])}"
        two = torchrun("sweep", path, "--grid", grid, "--out", root / f"two-{key}", "--no-progress")
        assert two.returncode == 0, two.stderr[-3000:]
        one = mtbert("sweep", path, "--grid", grid, "--out", root / f"one-{key}", "--no-progress",
                     "--set", "train.batch_size=16")
        assert one.returncode == 0, one.stderr[-3000:]
        rows = (root / f"two-{key}" / "summary.jsonl").read_text().splitlines()
        assert [json.loads(r)["run"] for r in rows] == [f"{key}={n}" for n in NAMES[kind]]  # written once
    return root


def interrupted_then_resumed(registry, spec, path, at_step):
    trainer = Trainer(spec, registry, progress=False)
    interrupt_at(trainer, at_step)
    with pytest.raises(Interrupted):
        trainer.fit(RunDir.create(spec, str(path)))
    Trainer(spec, registry, progress=False).fit(RunDir.existing(path, spec), resume=True)


@pytest.mark.parametrize("kind, name", METHODS, ids=[f"{KEY[k]}-{n}" for k, n in METHODS])
def test_bf16_accumulation_resume_and_two_processes(registry, tmp_path, sweeps, kind, name):
    data = spec_data(registry, tmp_path)
    data[KEY[kind]] = name
    spec = structure_spec(data, registry)

    # bf16 + accumulation: it trains (the weights move and stay finite) ...
    Trainer(spec, registry, progress=False).fit(RunDir.create(spec, str(tmp_path / "whole")))
    whole = tensors(tmp_path / "whole", "model.safetensors")
    initial = Trainer(spec, registry, progress=False).model.state_dict()
    assert any(not torch.equal(whole[k], initial[k]) for k in whole)
    assert all(torch.isfinite(v).all() for v in whole.values()) and read_metrics(tmp_path / "whole")

    # ... and interrupted mid-epoch 2 (3 optimizer steps an epoch), then resumed, it ends bitwise alike
    interrupted_then_resumed(registry, spec, tmp_path / "resumed", at_step=4)
    for file in ("model.safetensors", "balancers.safetensors"):
        a, b = tensors(tmp_path / "whole", file), tensors(tmp_path / "resumed", file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file

    # two processes = one with the doubled batch, the model and the balancer's state
    run = f"{KEY[kind]}={name}"
    for file in ("model.safetensors", "balancers.safetensors"):
        a = tensors(sweeps / f"two-{KEY[kind]}" / run, file)
        b = tensors(sweeps / f"one-{KEY[kind]}" / run, file)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{file}: {k}")
