"""A full disk or Ctrl-C while the training state is written: a message, nothing half-written."""

from __future__ import annotations

import errno
import json

import pytest
import tomli_w
from click.testing import CliRunner

import mtbert.runs.state as state_module
from mtbert.runs.state import peek
from mtbert.model.build import build_model
from mtbert.runs.checkpoint import load_weights
from mtbert.commands.cli import main
from mtbert.config.spec import structure_spec, unstructure

from helpers import toy_data, toy_spec


def spec_file(registry, tmp_path):
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=96), epochs=2, save_every=0,
                                log_every=2))
    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps(data))
    return path, structure_spec(data, registry)


def fail_on_second_state(monkeypatch, raised: BaseException):
    """The first state (at the second epoch's start) is written; the second (the end) fails part-way."""
    real, calls = state_module.save_file, []

    def save_file(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            with open(filename, "wb") as fp:
                fp.write(b"\0" * 100)  # a partial file, then the failure
            raise raised
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(state_module, "save_file", save_file)


def saved_step(run):
    return peek(run / "state")["step"]


@pytest.mark.parametrize("raised, code, message", [
    (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
    (KeyboardInterrupt(), 130, "interrupted"),  # Ctrl-C in the middle of the write
], ids=["disk-full", "sigint"])
def test_a_failed_state_write_leaves_the_previous_state_whole(registry, tmp_path, monkeypatch, raised, code,
                                                              message):
    path, spec = spec_file(registry, tmp_path)
    run = tmp_path / "run"
    with monkeypatch.context() as failing:  # (its own context: undoing it keeps conftest's environment)
        fail_on_second_state(failing, raised)
        result = CliRunner().invoke(main, ["run", str(path), "--out", str(run), "--no-progress"])
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output
    if code == 2:
        assert f"could not write the training state into {run / 'state'}" in result.output
        assert "--resume" in result.output
    assert not (run / "state.tmp").exists() and not (run / "state.old").exists()
    assert saved_step(run) == 12  # the first state (epoch 2 starts at step 12), untouched and readable
    state_module.load_state(run / "state")
    model = build_model(spec, registry)
    load_weights(model, run / "checkpoint")  # the best checkpoint (epoch 1) is whole

    # space again (the failing write was undone with its context): the run continues from the state it kept
    resumed = CliRunner().invoke(main, ["run", str(path), "--resume", str(run), "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
