"""mtbert compare: runs side by side as text, Markdown or CSV."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mtbert.cli import main


def fake_run(path, overall, sst, sts):
    path.mkdir(parents=True)
    best = {"step": 10, "epoch": 1, "overall": overall,
            "tasks": {"sst": {"accuracy": sst, "f1": sst / 2}, "sts": {"pearson": sts, "spearman": sts}}}
    (path / "best.json").write_text(json.dumps(best))
    return path


def test_compare_formats(tmp_path):
    a = fake_run(tmp_path / "baseline", 0.61234, 0.5, 0.8)
    b = fake_run(tmp_path / "pals", 0.7, 0.525, 0.85)
    runner = CliRunner()
    text = runner.invoke(main, ["compare", str(a), str(b)])
    assert text.exit_code == 0
    assert text.output.splitlines() == [
        "run       sst accuracy  sts pearson  overall",
        "baseline  0.5000        0.8000       0.6123",
        "pals      0.5250        0.8500       0.7000"]
    md = runner.invoke(main, ["compare", str(a), str(b), "--format", "markdown", "--all-metrics"])
    assert md.output.splitlines()[0] == "| run | sst accuracy | sst f1 | sts pearson | sts spearman | overall |"
    assert md.output.splitlines()[3] == "| pals | 0.5250 | 0.2625 | 0.8500 | 0.8500 | 0.7000 |"
    out = tmp_path / "table.csv"
    csv_run = runner.invoke(main, ["compare", str(a), str(b), "--format", "csv", "--output", str(out)])
    assert csv_run.exit_code == 0
    assert out.read_text().splitlines()[1] == "baseline,0.5000,0.8000,0.6123"


def test_compare_refuses_a_directory_without_results(tmp_path):
    result = CliRunner().invoke(main, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "has no best.json" in result.output
