"""Resume and reuse: an interrupted run continues exactly; a run can start from another's weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mtbert.base.errors import MtbertError, SpecError
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec, unstructure
from mtbert.runs.state import load_state, peek
from mtbert.testing.runs import assert_resumes_bitwise
from mtbert.training.loop import Trainer

from helpers import Interrupted, interrupt_at, toy_data, toy_spec, script, mtbert



def spec_for(registry, tmp_path, **changes):
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=96), epochs=3, save_every=4, log_every=2))
    data.update(changes)
    if "phases" in changes:
        data["train"].pop("epochs")
    return structure_spec(data, registry)


def run_whole(registry, spec, path):
    Trainer(spec, registry, progress=False).fit(RunDir.create(spec, str(path)))


def run_interrupted(registry, spec, path, at_step):
    trainer = Trainer(spec, registry, progress=False)
    interrupt_at(trainer, at_step)
    with pytest.raises(Interrupted):
        trainer.fit(RunDir.create(spec, str(path)))
    saved = peek(path / "state")  # where the state was taken
    resumed = Trainer(spec, registry, progress=False)
    calls = []
    original_resumed = resumed._micro_batch
    resumed._micro_batch = lambda tasks: (calls.append(resumed.step), original_resumed(tasks))
    resumed.fit(RunDir.existing(path, spec), resume=True)
    # it continued from the saved state, close to the interruption, rather than starting over
    assert calls[0] == saved["step"] > 0
    assert at_step - calls[0] <= 4


def assert_same_run(a, b):
    weights_a = load_file(str(a / "checkpoint" / "model.safetensors"))
    weights_b = load_file(str(b / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)  # bitwise
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
                          for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert strip(a) == strip(b)
    assert (a / "predictions" / "sent-dev-output.csv").read_text() == \
        (b / "predictions" / "sent-dev-output.csv").read_text()
    if (a / "checkpoint" / "balancers.safetensors").exists():  # a balancer's learned weights, bitwise
        balancers_a = load_file(str(a / "checkpoint" / "balancers.safetensors"))
        balancers_b = load_file(str(b / "checkpoint" / "balancers.safetensors"))
        assert balancers_a.keys() == balancers_b.keys() and balancers_a
        assert all(torch.equal(balancers_a[k], balancers_b[k]) for k in balancers_a)


@pytest.mark.parametrize("at_step", [5, 12, 13])  # mid-epoch, at an epoch's end (12 steps each), just after
def test_resumed_run_equals_the_uninterrupted_one(registry, tmp_path, at_step):
    spec = spec_for(registry, tmp_path)
    run_whole(registry, spec, tmp_path / "whole")
    run_interrupted(registry, spec, tmp_path / "resumed", at_step)
    assert_same_run(tmp_path / "whole", tmp_path / "resumed")


def test_resume_with_gradient_surgery_smart_and_phases(registry, tmp_path):
    """Every piece of state matters here: GradVac's targets, SMART's teacher, the phase. Through the
    plugin kit's check (mtbert.testing.runs): the checkpoint files equal byte for byte."""
    spec = spec_for(registry, tmp_path, sampler="all_tasks", gradient="gradvac",
                    regularizers=[{"name": "smart", "sigma": 1e-3, "epsilon": 1e-3}],
                    phases=[{"name": "heads", "trainable": "heads", "steps": 3},
                            {"name": "all", "epochs": 2}])
    assert_resumes_bitwise(registry, spec, tmp_path / "kit", at_step=9)


@pytest.mark.parametrize("changes", [{"balancer": "famo"}, {"balancer": "dwa", "train": {"epochs": 4}},
                                     {"gradient": "db_mtl"}, {"gradient": {"name": "nash_mtl", "update_every": 2}}],
                         ids=["famo", "dwa", "db_mtl", "nash_mtl"])
def test_stateful_methods_resume_bitwise(registry, tmp_path, changes):
    """The methods that keep a running state (FAMO's logits and Adam moments, DWA's epoch losses,
    DB-MTL's averages, Nash-MTL's reused weights): their runs stopped mid-way end byte for byte as the
    uninterrupted ones."""
    changes = dict(changes)
    train = {"epochs": 3, "save_every": 4, "log_every": 2, **changes.pop("train", {})}
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=96), **train))
    data.update(sampler="all_tasks", **changes)
    assert_resumes_bitwise(registry, structure_spec(data, registry), tmp_path / "kit", at_step=11)


def test_resume_refuses_another_spec(registry, tmp_path):
    spec = spec_for(registry, tmp_path)
    run_whole(registry, spec, tmp_path / "run")
    other = spec_for(registry, tmp_path, seed=4)
    with pytest.raises(MtbertError, match="-seed = 3"):
        RunDir.existing(tmp_path / "run", other)


def test_start_from_another_runs_weights(registry, tmp_path):
    """Report 001's transfer across two runs: heads first, then everything from those heads."""
    heads = spec_for(registry, tmp_path, train={**unstructure(spec_for(registry, tmp_path).train),
                                                "trainable": "heads"})
    run_whole(registry, heads, tmp_path / "heads")
    trained = load_file(str(tmp_path / "heads" / "checkpoint" / "model.safetensors"))
    full = spec_for(registry, tmp_path, init_from=str(tmp_path / "heads"))
    trainer = Trainer(full, registry, progress=False)
    start = trainer.model.state_dict()
    assert all(torch.equal(start[k], trained[k]) for k in trained)
    with pytest.raises(SpecError, match="holds no checkpoint"):
        spec_for(registry, tmp_path, init_from=str(tmp_path / "data"))


STOPS = [
    pytest.param("SIGTERM", {}, id="sigterm"),
    # a crash with a balancer's learned weights and PCGrad's state, which come back bitwise too
    # (a plain crash runs the same loop and files; test_state_schema.py and test_one_writer.py kill runs too)
    pytest.param("SIGKILL", {"balancer": "uncertainty", "sampler": "all_tasks", "gradient": "pcgrad"},
                 id="sigkill-uncertainty-pcgrad"),
]


def run_and_stop(path, out, signum):
    """Start `mtbert run` and send ``signum`` once it has saved a state at a step in 6..53, before
    the end of the first epoch (60 steps; 30 with the all-tasks sampler, then inside the second);
    returns the process and the step of that state (None if the run ended first)."""
    import subprocess
    import time

    process = subprocess.Popen([script(), "run", str(path), "--out", str(out), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = out / "state" / "state.json"
    while process.poll() is None:
        if state.exists():  # written by an atomic rename: whole when visible, absent during the swap
            step = peek(out / "state").get("step", 0)
            if 6 <= step < 54:
                process.send_signal(signum)
                return process, step
        time.sleep(0.01)
    return process, None


@pytest.mark.parametrize("stop, changes", STOPS)
def test_stopped_mid_epoch_then_resume_from_the_command_line(registry, tmp_path, stop, changes):
    """A real crash (SIGKILL) or a scheduler's stop (SIGTERM) once a state was saved mid-epoch, then
    `--resume`: the same run as one never stopped; a second `--resume` finds nothing to do."""
    import signal

    import tomli_w

    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=480), epochs=2, save_every=3,
                                log_every=5))
    data.update(changes)
    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps(data))
    assert mtbert("run", path, "--out", tmp_path / "whole", "--no-progress").returncode == 0

    # The poller can be starved of the CPU while the run trains (2 cores, 2 torch threads), so a
    # run that ends before it could be stopped is tried again afresh.
    for attempt in range(3):
        killed = tmp_path / f"killed-{attempt}"
        process, stopped_at = run_and_stop(path, killed, getattr(signal, stop))
        out, err = process.communicate(timeout=300)
        if stopped_at is not None:
            break
    else:
        pytest.fail("three runs ended before a state at steps 6..53 could be seen")
    if stop == "SIGKILL":
        assert process.returncode == -signal.SIGKILL, err[-2000:]
    else:
        assert process.returncode == 143, err[-2000:]
        assert "SIGTERM received: saved a resumable state at step" in err and "--resume" in err
        assert "Traceback" not in err
    assert not (killed / "best.json").exists()
    assert not (killed / "state.tmp").exists()

    resumed = mtbert("run", path, "--resume", killed, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step" in resumed.stderr
    assert_same_run(tmp_path / "whole", killed)

    again = mtbert("run", path, "--resume", killed, "--no-progress")
    assert again.returncode == 0, again.stderr
    assert f"already finished at step {read_best_step(killed)}" in again.stdout and "nothing to do" in again.stdout
    assert "Traceback" not in again.stderr


def read_best_step(run):
    """The last step of a finished run, from its final metrics line."""
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]


def test_elapsed_time_continues_across_resume(registry, tmp_path):
    """metrics.jsonl's elapsed_s counts the run's training time: a resumed run continues the clock
    of the state it resumed from rather than restarting from zero."""
    spec = spec_for(registry, tmp_path)
    path = tmp_path / "run"
    trainer = Trainer(spec, registry, progress=False)
    interrupt_at(trainer, 18)
    with pytest.raises(Interrupted):
        trainer.fit(RunDir.create(spec, str(path)))
    before = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    state = load_state(path / "state")
    saved, cut = state["evaluator"]["elapsed_s"], state["counters"]["step"]
    assert before and saved >= before[-1]["elapsed_s"] > 0
    Trainer(spec, registry, progress=False).fit(RunDir.existing(path, spec), resume=True)
    after = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in after if r["step"] > cut]  # evaluated by the resumed run
    assert resumed and all(r["elapsed_s"] >= saved for r in resumed)
    assert [r["elapsed_s"] for r in after] == sorted(r["elapsed_s"] for r in after)


def test_the_model_ends_with_the_last_steps_weights(registry, tmp_path):
    """After fit the model holds the last optimizer step's weights (as the final training state does),
    not the best checkpoint's, which only the test predictions are made with."""
    spec = spec_for(registry, tmp_path)
    trainer = Trainer(spec, registry, progress=False)
    last = {}
    original = trainer._update

    def update():
        stats = original()
        last.update({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        return stats

    trainer._update = update
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    final = load_state(tmp_path / "run" / "state")
    assert final["counters"]["finished"]
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, last[key]) and torch.equal(final["model"][key], last[key]), key
