"""Every shipped example validates, and trains a few steps on the tiny encoder."""

from __future__ import annotations

import tomllib

import pytest

from mtbert.runs.rundir import RunDir
from mtbert.config.spec import load_spec, structure_spec
from mtbert.training.loop import Trainer

from helpers import ROOT, TINY_ENCODER


EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def test_there_are_examples():
    names = {p.stem for p in EXAMPLES}
    assert {"baseline", "single_task_sst", "single_task_para", "single_task_sts"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates(path, registry, data_dir):
    spec = load_spec(path, registry, env={"MTBERT_DATA": str(data_dir)})
    assert spec.tasks


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_trains_a_few_steps(path, registry, data_dir, tmp_path):
    data = tomllib.loads(path.read_text())
    data["encoder"] = dict(TINY_ENCODER)
    data["data"]["dir"] = str(data_dir)
    data["train"] = {**data.get("train", {}), "eval_every": 2}
    data["train"].pop("epochs", None)
    if "phases" in data:  # two steps in all, one per phase
        data["phases"] = [{**{k: v for k, v in p.items() if k not in ("epochs", "steps")}, "steps": 1}
                          for p in data["phases"][:2]]
    else:
        data["train"]["steps"] = 2
    for task in data["tasks"].values():
        task["data"]["limit"] = 64
    spec = structure_spec(data, registry)
    trainer = Trainer(spec, registry, progress=False)
    best = trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    assert trainer.step == 2
    assert set(best["tasks"]) == set(spec.tasks)


def test_examples_are_generated_from_the_baseline():
    """benchmarks/make_examples.py is the source of the experiment specs: they must match it."""
    import importlib.util

    module_path = ROOT / "benchmarks" / "make_examples.py"
    spec = importlib.util.spec_from_file_location("make_examples", module_path)
    make_examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_examples)
    for name, title, change in make_examples.experiments():
        assert (ROOT / "examples" / f"{name}.toml").read_text() == make_examples.render(name, title, change), name
