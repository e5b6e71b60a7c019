"""A run directory has one writer at a time, and a run stopped before it began leaves nothing in the way.

Before, ``--resume`` of a run still training (or two ``--resume`` at once) trained twice into one
directory: duplicated steps in metrics.jsonl and a misleading "free space" message for the loser.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import tomli_w
from click.testing import CliRunner

from mtbert.base.errors import MtbertError
from mtbert.commands.cli import main
from mtbert.config.spec import unstructure
from mtbert.runs.rundir import LOCK, RunDir, free_dir
from mtbert.training.loop import Trainer

from helpers import Interrupted, interrupt_at, toy_data, toy_spec


@pytest.fixture(scope="module")
def stopped(registry, tmp_path_factory):
    """A toy run interrupted at step 9 (a state at step 8), and its spec file."""
    tmp_path = tmp_path_factory.mktemp("one-writer")
    spec = toy_spec(registry, toy_data(tmp_path / "data", n=96), epochs=1, save_every=4)
    trainer = Trainer(spec, registry, progress=False)
    interrupt_at(trainer, 9)
    run = RunDir.create(spec, tmp_path / "run")
    with pytest.raises(Interrupted):
        trainer.fit(run)
    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps(unstructure(spec)))
    return run.path, path


def hold(directory):
    """Another process that holds ``directory`` (as a training run does) until it is killed."""
    code = ("import sys, time; from mtbert.runs.rundir import RunDir; held = RunDir(sys.argv[1]).lock(); "
            "print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    first = RunDir(tmp_path).lock()
    with pytest.raises(MtbertError, match=rf"{tmp_path} is in use by process {os.getpid()} on "):
        RunDir(tmp_path).lock()
    first.unlock()
    RunDir(tmp_path).lock().unlock()  # released: the next one gets it


def test_resume_of_a_run_in_use_is_refused_at_once(stopped):
    run, spec = stopped
    holder = hold(run)
    try:
        started = time.perf_counter()
        result = CliRunner().invoke(main, ["run", str(spec), "--resume", str(run), "--no-progress"])
        took = time.perf_counter() - started
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 2, result.output
    assert f"{run} is in use by process {holder.pid} on " in result.output and "Traceback" not in result.output
    assert "one writer at a time" in result.output
    assert took < 5  # refused before the data is read or a model is built


def test_a_lock_left_by_a_killed_process_does_not_block(stopped, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped[0], run)
    holder = hold(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert f"process {holder.pid}" in (run / LOCK).read_text()  # the file stays; the lock went with the process
    result = CliRunner().invoke(main, ["run", str(stopped[1]), "--resume", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"process {holder.pid}" not in (run / LOCK).read_text()


def never_began(path, spec_text):
    """What a run killed while it read its data leaves: its spec, its log, an empty tb/."""
    path.mkdir(parents=True)
    (path / "spec.toml").write_text(spec_text)
    (path / "log.txt").write_text("reading data\n")
    (path / "tb").mkdir()
    return path


def test_a_run_stopped_before_it_began_is_reused_by_out(stopped, tmp_path):
    _, spec = stopped
    left = never_began(tmp_path / "left", spec.read_text())
    assert free_dir(tmp_path / "other", left) == left  # --out takes it
    result = CliRunner().invoke(main, ["run", str(spec), "--out", str(left), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (left / "best.json").is_file()


def test_a_run_stopped_before_it_began_is_named_when_resumed(stopped, tmp_path):
    _, spec = stopped
    left = never_began(tmp_path / "left", spec.read_text())
    result = CliRunner().invoke(main, ["run", str(spec), "--resume", str(left), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "stopped before its first training state" in result.output
    assert f"mtbert run SPEC --out {left}" in result.output and "Traceback" not in result.output


def test_a_default_name_skips_runs_but_not_a_run_that_never_began(stopped, tmp_path):
    run, spec = stopped
    default = tmp_path / "toy"
    never_began(default, spec.read_text())
    assert free_dir(default) == default
    (default / "metrics.jsonl").write_text("")  # it trained: no longer free
    assert free_dir(default) == tmp_path / "toy-2"


def test_out_that_is_a_file_or_under_a_file(stopped, tmp_path):
    _, spec = stopped
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, expected in ((afile / "x", "a part of that path is a file"), (afile, "is a file")):
        result = CliRunner().invoke(main, ["run", str(spec), "--out", str(out), "--no-progress"])
        assert result.exit_code == 2, result.output
        assert expected in result.output and "Traceback" not in result.output
    assert afile.read_text() == "x"
