"""Checkpoint faults: crashes while saving, checkpoints that do not fit or are corrupt, and no pickles.

(a) A crash at each point of ``save_checkpoint`` leaves the previous
    checkpoint directory whole -- byte for byte -- and loadable; the next
    successful save replaces it.
(b) A checkpoint that does not fit the spec's model is refused by
    ``load_weights`` with a CheckpointError naming the tensors and both
    shapes (and nothing is half-loaded); a corrupt ``model.safetensors`` is
    a CheckpointError too, and ``mtbert predict`` on such a run exits 2
    with a one-screen message.
(c) A tiny real run (train, evaluate, checkpoint, state, predictions,
    predict, resume state) never calls ``torch.load`` and writes no pickle:
    every file is JSON, TOML, safetensors, text/CSV or a TensorBoard event file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mtbert.base.atomic as atomic
import mtbert.runs.checkpoint as checkpoint
from mtbert.model.build import build_model
from mtbert.runs.checkpoint import WEIGHTS, find_checkpoint, load_weights, save_checkpoint
from mtbert.base.errors import CheckpointError, WriteError
from mtbert.config.spec import structure_spec

from helpers import TINY_ENCODER, mtbert


SST = {"data": {"train": "sst.tsv", "dev": "sst.tsv", "test": "sst-test.tsv", "label": "sentiment"},
       "head": {"name": "classifier", "num_labels": 5}, "loss": "cross_entropy", "metrics": ["accuracy"]}
STS = {"data": {"train": "sts.tsv", "dev": "sts.tsv", "text": "sentence1", "text_pair": "sentence2",
                "label": "similarity"},
       "head": {"name": "regression", "low": 0.0, "high": 5.0}, "loss": "mse", "metrics": ["pearson"]}


def spec_of(registry, *, num_labels: int = 5, hidden: int = 32, tasks=("sst",), data_dir: Path | None = None,
            **extra):
    sst = {**SST, "head": {"name": "classifier", "num_labels": num_labels}}
    data = {"name": "ckpt", "encoder": {**TINY_ENCODER, "hidden_size": hidden},
            "tasks": {t: {"sst": sst, "sts": STS, "extra": sst}[t] for t in tasks}, **extra}
    if data_dir is not None:
        data["data"] = {"dir": str(data_dir)}
    return structure_spec(data, registry, check_files=data_dir is not None)


def tensors_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_tensors(a: dict, b: dict) -> bool:
    """Bitwise equality of two name -> tensor maps."""
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``directory``."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_models(registry):
    """Two models of the same spec with different weights."""
    spec = spec_of(registry)
    first = build_model(spec, registry)
    second = build_model(spec, registry)
    with torch.no_grad():
        for param in second.parameters():
            param.add_(0.5)
    assert not same_tensors(tensors_of(first), tensors_of(second))
    return spec, first, second


# -- (a) a crash in the middle of save_checkpoint ----------------------------------------------------------

def crash_in_weights(monkeypatch, model):
    """safetensors writes half of the file, then the disk is full."""
    real = checkpoint.save_file

    def half_then_fail(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", half_then_fail)
    return WriteError  # a message naming the directory, not the OS error's traceback


def crash_in_architecture(monkeypatch, model):
    """The encoder writes a partial config.json, then fails."""

    def partial(directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text('{"model_type": "be')
        raise RuntimeError("tokenizer cannot be saved")

    monkeypatch.setattr(model.encoder, "save_architecture", partial)
    return RuntimeError


def crash_in_meta(monkeypatch, model):
    """The metadata is not JSON-serializable (written after the weights and the encoder)."""
    def fail(obj, **kwargs):
        raise TypeError("Object of type Tensor is not JSON serializable")

    monkeypatch.setattr(checkpoint.json, "dumps", fail)
    return TypeError


def crash_between_renames(monkeypatch, model):
    """The process dies after the old checkpoint was moved aside, before the new one is moved in."""
    real = os.replace

    def replace(src, dst):
        if str(src).endswith(".tmp"):
            raise RuntimeError("killed")  # as if the process died here
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    return RuntimeError


CRASHES = [
    pytest.param(crash_in_weights, id="weights"),
    pytest.param(crash_in_architecture, id="architecture"),
    pytest.param(crash_in_meta, id="meta"),
    # the previous checkpoint survives as checkpoint.old, which loading puts back in place
    pytest.param(crash_between_renames, id="between-renames"),
]


@pytest.mark.parametrize("crash", CRASHES)
def test_a_crash_while_saving_leaves_the_previous_checkpoint_whole(registry, two_models, tmp_path, crash):
    spec, first, second = two_models
    directory = tmp_path / "run" / "checkpoint"
    save_checkpoint(first, directory, {"step": 1})
    before = snapshot(directory)
    assert set(before) >= {WEIGHTS, "meta.json", "encoder/config.json"}

    with pytest.MonkeyPatch.context() as mp:
        error = crash(mp, second)
        with pytest.raises(error) as raised:
            save_checkpoint(second, directory, {"step": 2})
    if error is WriteError:
        assert str(directory) in str(raised.value) and "No space left on device" in str(raised.value)
    if crash is not crash_between_renames:  # a failed write cleans up after itself (a killed process cannot)
        assert not directory.with_name("checkpoint.tmp").exists()

    # whatever reads checkpoints finds the previous one whole (a crash between the two renames
    # leaves it as checkpoint.old, which finding it puts back)
    assert find_checkpoint(directory.parent) == directory
    assert directory.is_dir(), sorted(p.name for p in directory.parent.iterdir())
    assert snapshot(directory) == before  # every file byte for byte
    fresh = build_model(spec, registry)
    load_weights(fresh, directory)
    assert same_tensors(tensors_of(fresh), tensors_of(first))
    assert json.loads((directory / "meta.json").read_text())["step"] == 1

    save_checkpoint(second, directory, {"step": 2})  # the next save goes through and replaces it
    load_weights(fresh, directory)
    assert same_tensors(tensors_of(fresh), tensors_of(second))
    assert json.loads((directory / "meta.json").read_text())["step"] == 2
    assert sorted(p.name for p in directory.parent.iterdir()) == ["checkpoint"]  # no .tmp / .old left


# -- (b) checkpoints that do not fit, or are corrupt ---------------------------------------------------------

@pytest.fixture(scope="module")
def saved(registry, tmp_path_factory, two_models):
    """A checkpoint of the 5-class, hidden-32 model."""
    spec, first, _ = two_models
    directory = tmp_path_factory.mktemp("saved") / "checkpoint"
    save_checkpoint(first, directory, {"step": 1})
    return directory


def refused(model, directory: Path) -> str:
    """load_weights must refuse, and leave the model's weights as they were."""
    before = tensors_of(model)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, directory)
    assert same_tensors(tensors_of(model), before)  # nothing half-loaded
    return str(info.value)


def mismatches(model, directory: Path) -> dict[str, tuple[tuple, tuple]]:
    tensors = load_file(str(directory / WEIGHTS))
    own = model.state_dict()
    return {k: (tuple(tensors[k].shape), tuple(own[k].shape)) for k in own
            if k in tensors and tensors[k].shape != own[k].shape}


@pytest.mark.parametrize("change", [{"num_labels": 3}, {"hidden": 48}], ids=["num_labels", "encoder-size"])
def test_a_checkpoint_of_another_shape_is_refused_naming_tensors_and_shapes(registry, saved, change):
    model = build_model(spec_of(registry, **change), registry)
    message = refused(model, saved)
    assert message.startswith(f"{saved / WEIGHTS} does not fit the model built from the spec:")
    wrong = mismatches(model, saved)
    assert wrong  # the test is about something
    for name, (theirs, ours) in list(wrong.items())[:8]:  # the first ones by name, the rest counted
        assert f"{name}: checkpoint {theirs}, model {ours}" in message
    if len(wrong) > 8:
        assert f"... and {len(wrong) - 8} more tensors of another shape" in message
    assert "fix: use the spec the checkpoint was trained with" in message


def test_a_checkpoint_of_another_encoder_size_gives_a_one_screen_message(registry, saved):
    message = refused(build_model(spec_of(registry, hidden=48), registry), saved)
    assert len(message.splitlines()) <= 24, len(message.splitlines())


def test_a_checkpoint_with_other_tasks_names_the_missing_and_unexpected_tensors(registry, saved, tmp_path):
    message = refused(build_model(spec_of(registry, tasks=("sst", "extra")), registry), saved)
    assert "missing from the checkpoint: heads.extra.linear.weight, heads.extra.linear.bias" in message
    bigger = tmp_path / "bigger"
    save_checkpoint(build_model(spec_of(registry, tasks=("sst", "extra")), registry), bigger, {})
    message = refused(build_model(spec_of(registry), registry), bigger)
    unexpected = message.split("in the checkpoint but not in the model: ")[1].splitlines()[0]
    assert sorted(unexpected.split(", ")) == ["heads.extra.linear.bias", "heads.extra.linear.weight"]


CORRUPTIONS = ["truncated-half", "truncated-header", "empty", "garbage", "huge-header-length", "header-not-json",
               "unknown-dtype", "bad-offsets", "a-pickle", "a-torch-zip"]


def corruptions(raw: bytes) -> dict[str, bytes]:
    (length,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + length]
    return {
        "truncated-half": raw[: len(raw) // 2],
        "truncated-header": raw[:20],
        "empty": b"",
        "garbage": bytes(range(256)) * 16,
        "huge-header-length": struct.pack("<Q", 2**62) + raw[8:],
        "header-not-json": raw[:8] + b"{" * length + raw[8 + length:],
        "unknown-dtype": raw[:8] + header.replace(b'"F32"', b'"X32"', 1) + raw[8 + length:],
        "bad-offsets": raw[:8] + header.replace(b'"data_offsets":[0,', b'"data_offsets":[9,', 1)
        + raw[8 + length:],
        "a-pickle": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
        "a-torch-zip": b"PK\x03\x04" + bytes(200),
    }


@pytest.fixture
def no_torch_load(monkeypatch):
    """torch.load (which unpickles) must never be called."""
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError("torch.load called: checkpoints must not be unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)
    yield calls
    assert calls == []


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_corrupt_weights_file_is_a_checkpoint_error(registry, saved, tmp_path, no_torch_load, kind):
    directory = tmp_path / "checkpoint"
    shutil.copytree(saved, directory)
    raw = (saved / WEIGHTS).read_bytes()
    variants = corruptions(raw)
    assert sorted(variants) == sorted(CORRUPTIONS) and variants[kind] != raw
    content = variants[kind]
    (directory / WEIGHTS).write_bytes(content)
    message = refused(build_model(spec_of(registry), registry), directory)
    assert message.startswith(f"{directory / WEIGHTS} is not a readable safetensors file: ")
    assert len(message.splitlines()) <= 3


def test_weights_that_are_a_directory_or_missing(registry, saved, tmp_path):
    directory = tmp_path / "checkpoint"
    shutil.copytree(saved, directory)
    (directory / WEIGHTS).unlink()
    model = build_model(spec_of(registry), registry)
    assert refused(model, directory).startswith(f"no {WEIGHTS} in {directory}")
    (directory / WEIGHTS).mkdir()
    assert refused(model, directory).startswith(f"no {WEIGHTS} in {directory}")


# -- (c) a tiny real run: no pickles, no torch.load ---------------------------------------------------------------

def write_tiny_data(root: Path) -> Path:
    root.mkdir(parents=True)
    words = ["good", "bad", "fine", "dull", "great", "awful", "odd", "nice"]
    (root / "sst.tsv").write_text("id\tsentence\tsentiment\n"
                                  + "".join(f"s{i}\ta {w} movie\t{i % 5}\n" for i, w in enumerate(words)))
    (root / "sst-test.tsv").write_text("id\tsentence\n" + "".join(f"t{i}\tso {w}\n" for i, w in enumerate(words)))
    (root / "sts.tsv").write_text("id\tsentence1\tsentence2\tsimilarity\n"
                                  + "".join(f"p{i}\ta {w} cat\tthe {w} dog\t{i * 0.6:.1f}\n"
                                            for i, w in enumerate(words)))
    return root


@pytest.fixture(scope="module")
def tiny_run(registry, tmp_path_factory):
    """Train, checkpoint, save states, predict and read the state back -- with torch.load forbidden."""
    from mtbert.commands.inference import Predictor
    from mtbert.runs.rundir import RunDir
    from mtbert.runs.state import load_state
    from mtbert.training.loop import Trainer

    root = tmp_path_factory.mktemp("tiny-run")
    data = write_tiny_data(root / "data")
    spec = spec_of(registry, tasks=("sst", "sts"), data_dir=data, out=str(root / "runs"),
                   train={"epochs": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1, "save_every": 1})
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError("torch.load called")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", forbidden)
        mp.setattr(torch.serialization, "load", forbidden)
        run = RunDir.create(spec, root / "run")
        best = Trainer(spec, registry, progress=False).fit(run)
        predicted = Predictor.load(run.path, "cpu", registry).predict_file("sst", data / "sst-test.tsv",
                                                                           root / "predicted.csv")
        state = load_state(run.state)
    assert calls == []
    return run, best, predicted, state, data, root


def test_the_tiny_run_finished_and_never_called_torch_load(tiny_run):
    run, best, predicted, state, _, root = tiny_run
    assert best is not None and set(best["tasks"]) == {"sst", "sts"}
    assert predicted == 8 and len((root / "predicted.csv").read_text().splitlines()) == 9
    assert state["counters"]["step"] >= 1 and "model" in state
    assert (run.checkpoint / WEIGHTS).is_file() and (run.state / "tensors.safetensors").is_file()


def file_format(path: Path) -> str:
    """What a run file is, judged by its content (and the name it must then have)."""
    raw = path.read_bytes()
    assert not raw.startswith(b"PK\x03\x04"), f"{path} is a zip archive (torch.save format)"
    assert not (raw[:1] == b"\x80" and raw[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), f"{path} is a pickle"
    name = path.name
    if name.startswith("events.out.tfevents."):
        (length,) = struct.unpack("<Q", raw[:8])  # TFRecord: length, crc, a serialized Event proto
        assert 0 < length < len(raw)
        return "tensorboard"
    if name.endswith(".safetensors"):
        load_file(str(path))
        return "safetensors"
    text = raw.decode("utf-8")
    if name.endswith(".json"):
        json.loads(text)
        return "json"
    if name.endswith(".jsonl"):
        for line in text.splitlines():
            json.loads(line)
        return "json"
    if name.endswith(".toml"):
        tomllib.loads(text)
        return "toml"
    assert name.endswith((".csv", ".txt")) or name == ".lock", f"{path}: an unexpected kind of file"
    return "text"


def test_no_file_of_the_run_is_a_pickle(tiny_run):
    run, *_ = tiny_run
    files = [p for p in run.path.rglob("*") if p.is_file()]
    formats = {str(p.relative_to(run.path)): file_format(p) for p in files}
    assert set(formats.values()) == {"json", "toml", "safetensors", "text", "tensorboard"}, formats
    assert formats["spec.toml"] == "toml" and formats["checkpoint/model.safetensors"] == "safetensors"
    assert formats["state/tensors.safetensors"] == "safetensors" and formats["metrics.jsonl"] == "json"
    assert any(k.startswith("predictions/") for k in formats)
    assert not any(p.suffix in {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"} for p in files)


def test_mtbert_predict_on_a_run_with_a_corrupt_checkpoint(tiny_run, tmp_path):
    run, _, _, _, data, _ = tiny_run
    broken = tmp_path / "run"
    shutil.copytree(run.path, broken)
    weights = broken / "checkpoint" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:4096])  # truncated, as by a full disk
    target = tmp_path / "pred.csv"
    result = mtbert("predict", broken, "--task", "sst", "--input", data / "sst-test.tsv", "--output", target)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"mtbert: checkpoint error: {weights} is not a readable safetensors file"), \
        result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stderr.splitlines()) <= 24
    assert not target.exists()


def test_a_checkpoint_config_that_is_not_a_json_object(registry, tiny_run, tmp_path):
    from mtbert.commands.inference import Predictor

    run, *_ = tiny_run
    broken = tmp_path / "run"
    shutil.copytree(run.path, broken)
    (broken / "checkpoint" / "encoder" / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="config.json"):
        Predictor.load(broken, "cpu", registry)
