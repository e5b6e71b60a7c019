"""The command line end to end: run, validate, predict; user mistakes give one-screen messages."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w

from helpers import ROOT, TINY_ENCODER, mtbert


LIMIT = 300  # rows per file for the end-to-end run


def tiny_baseline(tmp_path) -> Path:
    """examples/baseline.toml on the tiny encoder and the first LIMIT rows of each file."""
    spec = tomllib.loads((ROOT / "examples" / "baseline.toml").read_text())
    spec["encoder"] = dict(TINY_ENCODER)
    spec["train"].update(epochs=1, lr=1e-3, log_every=5)
    for task in spec["tasks"].values():
        task["data"]["limit"] = LIMIT
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(spec))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    tmp_path = tmp_path_factory.mktemp("cli")
    out = tmp_path / "run"
    result = mtbert("run", tiny_baseline(tmp_path), "--out", out, "--no-progress", "--set", "seed=5",
                    env_data=data_dir)
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.mark.real
def test_run_writes_the_whole_run_directory(finished_run):
    out, result = finished_run
    assert "best overall" in result.stdout
    spec = tomllib.loads((out / "spec.toml").read_text())
    assert spec["seed"] == 5  # the --set override is in the resolved spec
    assert spec["tasks"]["sst"]["head"] == {"name": "classifier", "num_labels": 5, "dropout": 0.1,
                                            "pooling": "pooler"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and set(records[0]["tasks"]) == {"sst", "para", "sts"}
    assert set(records[0]) >= {"step", "epoch", "tasks", "overall"}
    assert json.loads((out / "best.json").read_text()) == records[0]
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert (out / "checkpoint" / "encoder" / "config.json").is_file()


@pytest.mark.real
def test_predictions_are_in_the_course_format(finished_run, data_dir):
    out, _ = finished_run
    files = sorted(p.name for p in (out / "predictions").iterdir())
    assert files == ["para-dev-output.csv", "sst-dev-output.csv", "sst-test-output.csv",
                     "sts-dev-output.csv", "sts-test-output.csv"]
    sst = (out / "predictions" / "sst-dev-output.csv").read_text().splitlines()
    assert sst[0] == "id \t Predicted_Sentiment " and len(sst) == LIMIT + 1
    assert sst[1].startswith("a7d575c9ed86ea9633660c67e , ") and sst[1].endswith(" ")
    sts = (out / "predictions" / "sts-test-output.csv").read_text().splitlines()
    assert sts[0] == "id \t Predicted_Similiary " and len(sts) == LIMIT + 1
    assert 0.0 <= float(sts[1].split(" , ")[1]) <= 5.0


@pytest.mark.real
def test_tensorboard_has_the_scalars(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = finished_run
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ["train/loss/sst", "train/loss/para", "train/loss/sts", "dev/sst/accuracy", "dev/sts/pearson",
                "dev/overall", "lr/encoder", "lr/heads", "throughput/examples_per_s"]:
        assert tag in tags, tag


@pytest.mark.real
def test_predict_reproduces_the_dev_predictions(finished_run, data_dir, tmp_path):
    out, _ = finished_run
    lines = (data_dir / "ids-sst-dev.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    part = tmp_path / "sst-part.tsv"
    part.write_text("".join(lines[:LIMIT + 1]), encoding="utf-8")
    target = tmp_path / "pred.csv"
    result = mtbert("predict", out, "--task", "sst", "--input", part, "--output", target)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == (out / "predictions" / "sst-dev-output.csv").read_text()


def test_run_refuses_to_overwrite(tmp_path, data_dir):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = mtbert("run", ROOT / "examples" / "baseline.toml", "--out", out, env_data=data_dir)
    assert result.returncode != 0 and "already holds files" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def spec_with(tmp_path, data_dir, change) -> Path:
    spec = tomllib.loads((ROOT / "examples" / "baseline.toml").read_text())
    spec["data"]["dir"] = str(data_dir)
    change(spec)
    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps(spec))
    return path


def misspelled_plugin(spec):
    spec["sampler"] = "round_robbin"


def wrong_type(spec):
    spec["tasks"]["sst"]["head"]["dropout"] = "high"


def unknown_key(spec):
    spec["train"]["learning_rate"] = 1e-5


def missing_file(spec):
    spec["tasks"]["sts"]["data"]["dev"] = "sts-dev-missing.csv"


@pytest.mark.parametrize("change, expected", [
    (misspelled_plugin, 'sampler: unknown sampler "round_robbin" (did you mean "round_robin"?)'),
    (wrong_type, 'tasks.sst.head.dropout: expected float, got "high"'),
    (unknown_key, 'train.learning_rate: unknown key'),
    (missing_file, "tasks.sts.data.dev: file"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_spec_mistakes_are_one_screen_messages(tmp_path, data_dir, change, expected, command):
    result = mtbert(command, spec_with(tmp_path, data_dir, change))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.splitlines()) <= 24
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_malformed_data_stops_before_training(tmp_path):
    (tmp_path / "train.tsv").write_text("id\tsentence\tsentiment\na\tfine\t3\nb\tbroken\t9\n")
    spec = tomllib.loads((ROOT / "examples" / "single_task_sst.toml").read_text())
    spec["encoder"] = dict(TINY_ENCODER)
    spec["data"]["dir"] = str(tmp_path)
    spec["tasks"]["sst"]["data"].update(train="train.tsv", dev="train.tsv")
    del spec["tasks"]["sst"]["data"]["test"]
    spec["out"] = str(tmp_path / "runs")
    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps(spec))
    result = mtbert("run", path)
    assert result.returncode == 2
    assert f"{tmp_path / 'train.tsv'}:3: label '9' is not a class in 0..4" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_validate_ok_and_set_overrides(data_dir):
    example = ROOT / "examples" / "baseline.toml"
    ok = mtbert("validate", example, "--set", "train.lr=2e-5", "--set", "tasks.sts.loss.name=mse",
                env_data=data_dir)
    assert ok.returncode == 0 and "ok (3 task(s)" in ok.stdout
    bad = mtbert("validate", example, "--set", "tasks.sts.loss.name=cross_entropy", env_data=data_dir)
    assert bad.returncode == 2 and "tasks.sts.loss:" in bad.stderr


def test_predict_mistakes(finished_run, tmp_path):
    out, _ = finished_run
    no_task = mtbert("predict", out, "--task", "nli", "--input", tmp_path / "x", "--output", tmp_path / "y")
    assert no_task.returncode == 2 and "unknown task 'nli'" in no_task.stderr
    no_run = mtbert("predict", tmp_path, "--task", "sst", "--input", tmp_path / "x", "--output", tmp_path / "y")
    assert no_run.returncode == 2 and "not an mtbert run directory" in no_run.stderr
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\tsentence\nx\ttoo\tmany\n")
    malformed = mtbert("predict", out, "--task", "sst", "--input", bad, "--output", tmp_path / "y")
    assert malformed.returncode == 2 and f"{bad}:2: expected 2 fields" in malformed.stderr
    assert "Traceback" not in malformed.stderr and not (tmp_path / "y").exists()
