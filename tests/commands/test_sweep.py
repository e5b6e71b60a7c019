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
