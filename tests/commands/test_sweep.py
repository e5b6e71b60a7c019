"""Sweeps: every combination validated first, one run each, one table."""

from __future__ import annotations

import json

import pytest
import tomli_w
from click.testing import CliRunner

from mtbert.commands.cli import main
from mtbert.base.errors import SpecError
from mtbert.config.spec import unstructure
from mtbert.commands.sweep import label, parse_grid, plan_sweep, run_sweep

from helpers import toy_data, toy_spec



def write_spec(registry, tmp_path, **train):
    spec = toy_spec(registry, toy_data(tmp_path / "data"), **train)
    data = unstructure(spec)
    data["out"] = str(tmp_path / "runs")
    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def test_parse_grid_and_labels():
    grid = parse_grid(("train.lr=1e-5,2e-5", "tasks.sst.head.dropout=0.1"))
    assert grid == [("train.lr", ["train.lr=1e-5", "train.lr=2e-5"]),
                    ("tasks.sst.head.dropout", ["tasks.sst.head.dropout=0.1"])]
    assert label(("train.lr=1e-5", "tasks.sst.head.dropout=0.1")) == "lr=1e-5,dropout=0.1"
    with pytest.raises(SpecError):
        parse_grid(("train.lr=",))


def test_every_combination_is_validated_before_training(registry, tmp_path):
    path = write_spec(registry, tmp_path, steps=2)
    planned = plan_sweep(path, registry, ("train.lr=1e-3,2e-3", "train.batch_size=8,16"))
    assert len(planned) == 4
    assert {(s.train.lr, s.train.batch_size) for _, s in planned} == {(1e-3, 8), (1e-3, 16), (2e-3, 8), (2e-3, 16)}
    with pytest.raises(SpecError) as excinfo:
        plan_sweep(path, registry, ("train.batch_size=8,zero",))
    [(where, message)] = excinfo.value.problems
    assert where == "[batch_size=zero] train.batch_size" and "expected int" in message


def test_sweep_runs_each_and_tabulates(registry, tmp_path):
    path = write_spec(registry, tmp_path, steps=2, eval_every=2)
    lines = []
    root = run_sweep(path, registry, ("train.lr=1e-3,3e-3",), progress=False, echo=lines.append)
    assert root == tmp_path / "runs" / "toy-sweep"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["lr=1e-3", "lr=3e-3"]
    rows = [json.loads(line) for line in (root / "summary.jsonl").read_text().splitlines()]
    assert [r["overrides"] for r in rows] == [["train.lr=1e-3"], ["train.lr=3e-3"]]
    table = (root / "summary.md").read_text().splitlines()
    assert table[0] == "| run | sent accuracy | sent f1 | count pearson | overall |"
    assert table[2].startswith("| lr=1e-3 | ") and len(table) == 4
    best = json.loads((root / "lr=3e-3" / "best.json").read_text())
    assert f"{best['overall']:.4f}" in table[3]
    compared = CliRunner().invoke(main, ["compare", str(root), "--format", "markdown", "--all-metrics"])
    assert compared.exit_code == 0, compared.output
    assert compared.stdout.splitlines() == table  # the sweep's own table, read back from its runs


def test_sweep_command_rejects_bad_values(registry, tmp_path):
    path = write_spec(registry, tmp_path, steps=2)
    result = CliRunner().invoke(main, ["sweep", str(path), "--grid", "train.lr=fast"])
    assert result.exit_code == 2
    assert "[lr=fast] train.lr: expected float" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_failing_combination_is_recorded_and_the_sweep_goes_on(registry, tmp_path):
    """A bad label file fails one combination; the others train and the summary names the failure."""
    path = write_spec(registry, tmp_path, steps=2, eval_every=2)
    data = tmp_path / "data"
    (data / "bad.tsv").write_text("id\tsentence\tlabel\nr0\tgood movie\tseven\n")
    lines = []
    root = run_sweep(path, registry, ("tasks.sent.data.train=bad.tsv,sent.tsv",), progress=False,
                     echo=lines.append)
    rows = [json.loads(line) for line in (root / "summary.jsonl").read_text().splitlines()]
    assert [r["run"] for r in rows] == ["train=bad.tsv", "train=sent.tsv"]
    assert "seven" in rows[0]["error"] and "overall" not in rows[0]
    assert rows[1]["overall"] > 0 and (root / "train=sent.tsv" / "best.json").is_file()
    summary = (root / "summary.md").read_text()
    assert "| train=bad.tsv | - |" in summary and "train=bad.tsv failed:" in summary
    assert any("1 of 2 combination(s) failed" in line for line in lines)


def test_combinations_that_name_one_directory_get_their_own(registry, tmp_path):
    path = write_spec(registry, tmp_path, steps=1, eval_every=1)
    root = run_sweep(path, registry, ("train.lr=1e-3,1e-3",), progress=False, echo=lambda _: None)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["lr=1e-3", "lr=1e-3-2"]


def test_sigterm_during_a_final_evaluation_stops_the_sweep(registry, tmp_path, monkeypatch):
    """The signal arrives while the first run evaluates for the last time: that run ends, the sweep
    writes the summary of it and stops with 143 instead of starting the next."""
    import os
    import signal

    from mtbert.base.errors import Stopped
    from mtbert.training.loop import Trainer

    real = Trainer._finish

    def finish(self):
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the run's own handler: a flag
        real(self)

    monkeypatch.setattr(Trainer, "_finish", finish)
    path = write_spec(registry, tmp_path, steps=2, eval_every=2)
    with pytest.raises(Stopped, match="the sweep stopped after 1 of 2 combinations"):
        run_sweep(path, registry, ("train.lr=1e-3,3e-3",), progress=False, echo=lambda _: None)
    root = tmp_path / "runs" / "toy-sweep"
    assert [json.loads(line)["run"] for line in (root / "summary.jsonl").read_text().splitlines()] == ["lr=1e-3"]
    assert (root / "lr=1e-3" / "best.json").is_file() and not (root / "lr=3e-3").exists()
    assert "lr=1e-3" in (root / "summary.md").read_text()
