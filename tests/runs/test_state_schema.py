"""--resume on a training state of the wrong shape: one message, exit 2, the run directory untouched.

Each variant is what a crash, a full disk, a hand edit or another program could leave in
``RUN/state``: well-formed JSON (or safetensors) of a shape the run cannot use. Before, each ended in
its own traceback, and an Adam moment of the wrong size made the fused AdamW kernel write out of
bounds; now the state is checked against the run's own parts before any of it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import tomli_w
import torch
from click.testing import CliRunner

from mtbert.base.errors import CheckpointError
from mtbert.commands.cli import main
from mtbert.config.spec import unstructure
from mtbert.runs.rundir import RunDir
from mtbert.runs.state import TREE, load_state, save_state
from mtbert.training.loop import Trainer

from helpers import Interrupted, interrupt_at, toy_data, toy_spec

STOP = 9  # the run is interrupted before this step; its state was saved at step 8


@pytest.fixture(scope="module")
def stopped(registry, tmp_path_factory):
    """A toy run stopped at step 9 with a state saved at step 8, and its spec file."""
    tmp_path = tmp_path_factory.mktemp("state-schema")
    spec = toy_spec(registry, toy_data(tmp_path / "data", n=96), epochs=2, save_every=4, eval_every=4)
    trainer = Trainer(spec, registry, progress=False)
    interrupt_at(trainer, STOP)
    run = RunDir.create(spec, tmp_path / "run")
    with pytest.raises(Interrupted):
        trainer.fit(run)
    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps(unstructure(spec)))
    return spec, run.path, path


def fingerprint(directory) -> dict:
    """Every file of a run directory (but the lock file, which records the last holder) by content."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}


def copy_run(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


def edit_tree(edit):
    """A variant made by editing the loaded state (tensors and all) and saving it again."""
    def apply(state_dir):
        tree = load_state(state_dir)
        edit(tree)
        save_state(state_dir, tree)
    return apply


def write_json(text):
    def apply(state_dir):
        (state_dir / TREE).write_text(text)
    return apply


def skeleton(edit):
    """A variant made by editing the JSON skeleton itself (what load_state unflattens)."""
    def apply(state_dir):
        data = json.loads((state_dir / TREE).read_text())
        edit(data)
        (state_dir / TREE).write_text(json.dumps(data))
    return apply


def first_moment(tree):
    return next(v for v in tree["optimizer"]["state"].values() if "exp_avg" in v)


def _rng(tree):
    tree["random"][0]["torch"] = 5


VARIANTS = {
    "a JSON list": (write_json("[1, 2, 3]"), "is damaged: the tree is list"),
    "a number": (write_json("42"), "is damaged: the tree is int"),
    "no rng": (edit_tree(lambda t: t.pop("random")), "random"),
    "no counters": (edit_tree(lambda t: t.pop("counters")), "no 'counters'"),
    "no finished": (edit_tree(lambda t: t["counters"].pop("finished")), "counters: no 'finished'"),
    "no streams": (edit_tree(lambda t: t.pop("streams/sent")), "no 'streams/sent'"),
    "no optimizer": (edit_tree(lambda t: t.pop("optimizer")), "no optimizer or schedule state"),
    "step abc": (edit_tree(lambda t: t["counters"].update(step="abc")), "counters/step: 'abc' is not a int"),
    "rng a number": (edit_tree(_rng), "random/0/torch: a tensor was expected"),
    "negative step": (edit_tree(lambda t: t["counters"].update(step=-5)), "counters: step -5"),
    "Adam moment of the wrong size": (edit_tree(lambda t: first_moment(t).update(exp_avg=torch.zeros(3))),
                                      "optimizer/state/0/exp_avg: (3,)"),
    "weights of the wrong shape": (edit_tree(lambda t: t["model"].update(
        {next(iter(t["model"])): torch.zeros(2, 2)})), "model/"),
    "a list as a dict key": (skeleton(lambda d: d["__dict__"].append([{"__list__": [1], "tuple": False}, 1])),
                             "unhashable"),
    "nesting 100000 deep": (write_json("[" * 100_000 + "]" * 100_000), "nested too deeply"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_damaged_state_is_refused_before_anything_is_touched(registry, stopped, tmp_path, variant):
    spec, source, _ = stopped
    run = copy_run(source, tmp_path / "run")
    damage, expected = VARIANTS[variant]
    damage(run / "state")
    before = fingerprint(run)
    with pytest.raises(CheckpointError) as caught:
        Trainer(spec, registry, progress=False).fit(RunDir.existing(run, spec), resume=True)
    message = str(caught.value)
    assert f"the training state in {run / 'state'}" in message and expected in message, message
    assert fingerprint(run) == before  # metrics.jsonl, tb/, checkpoint/, state/: as they were


def test_the_command_line_exits_2_with_one_message(stopped, tmp_path):
    _, source, spec_path = stopped
    run = copy_run(source, tmp_path / "run")
    edit_tree(lambda t: first_moment(t).update(exp_avg=torch.zeros(3)))(run / "state")
    before = fingerprint(run)
    result = CliRunner().invoke(main, ["run", str(spec_path), "--resume", str(run), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "is damaged: optimizer/state/0/exp_avg" in result.output and "Traceback" not in result.output
    after = fingerprint(run)
    after.pop("log.txt", None), before.pop("log.txt", None)  # the log may gain the attempt's lines
    assert after == before


def test_the_undamaged_state_resumes(registry, stopped, tmp_path):
    """The checks refuse nothing a run writes: the same state, not edited, resumes to the end."""
    spec, source, _ = stopped
    run = copy_run(source, tmp_path / "run")
    best = Trainer(spec, registry, progress=False).fit(RunDir.existing(run, spec), resume=True)
    assert best is not None and (run / "best.json").is_file()


def test_a_torn_metrics_line_is_dropped_on_resume(registry, stopped, tmp_path, caplog):
    """SIGKILL while an evaluation was appended leaves half a line: --resume drops it and goes on."""
    spec, source, _ = stopped
    run = copy_run(source, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as fp:
        fp.write('{"step": 12, "epoch": 1, "tas')
    with caplog.at_level(logging.WARNING, logger="mtbert"):
        Trainer(spec, registry, progress=False).fit(RunDir.existing(run, spec), resume=True)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]  # every line whole
    assert steps == sorted(set(steps)) and steps.count(12) == 1
    assert "dropped a damaged line" in caplog.text


def test_resume_says_which_data_file_changed(registry, stopped, tmp_path, caplog):
    spec, source, _ = stopped
    run = copy_run(source, tmp_path / "run")
    data = tmp_path / "data"
    toy_data(data, n=96, seed=1)  # the same files, regenerated with other rows
    moved = toy_spec(registry, data, epochs=2, save_every=4, eval_every=4)
    (run / "spec.toml").write_text((run / "spec.toml").read_text().replace(str(source.parent / "data"), str(data)))
    trainer = Trainer(moved, registry, progress=False)
    with caplog.at_level(logging.WARNING, logger="mtbert"):
        trainer.fit(RunDir.existing(run, moved), resume=True)
    assert sorted(trainer.data.changed) == ["count/dev", "count/train", "sent/dev", "sent/train"]
    assert f"{data / 'sent.tsv'} changed since the run's state was saved" in caplog.text

    same = copy_run(source, tmp_path / "same")
    again = Trainer(spec, registry, progress=False)
    again.fit(RunDir.existing(same, spec), resume=True)
    assert again.data.changed == []
