"""mtbert compare: runs side by side as text, Markdown or CSV."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mtbert.commands.cli import main


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


def fake_sweep(root):
    """What run_sweep leaves: a run directory per combination and summary.jsonl/.md in the order they ran."""
    for name, overall in [("lr=3e-5", 0.7), ("lr=1e-5", 0.6), ("lr=2e-5", 0.65)]:
        fake_run(root / name, overall, 0.5, 0.8)
        (root / name / "spec.toml").write_text('name = "toy"\n')
    with open(root / "summary.jsonl", "w") as fp:
        for name in ("lr=3e-5", "lr=1e-5", "lr=2e-5"):
            fp.write(json.dumps({"run": name, "overrides": [f"train.{name}"]}) + "\n")
    (root / "summary.md").write_text("| run |\n")
    return root


def runs_of(output):
    return [line.split()[0] for line in output.splitlines()[1:]]


def test_compare_a_sweep_directory_in_the_sweeps_order(tmp_path):
    root = fake_sweep(tmp_path / "toy-sweep")
    result = CliRunner().invoke(main, ["compare", str(root)])
    assert result.exit_code == 0, result.output
    assert runs_of(result.stdout) == ["lr=3e-5", "lr=1e-5", "lr=2e-5"]
    assert result.stderr == ""
    (root / "summary.jsonl").unlink()  # no summary (yet): by name
    assert runs_of(CliRunner().invoke(main, ["compare", str(root)]).stdout) == ["lr=1e-5", "lr=2e-5", "lr=3e-5"]


def test_compare_a_sweeps_glob_skips_its_summary_files(tmp_path):
    root = fake_sweep(tmp_path / "toy-sweep")
    other = fake_run(tmp_path / "baseline", 0.5, 0.4, 0.7)
    paths = [str(other)] + sorted(str(p) for p in root.iterdir())  # what the shell makes of SWEEP/*
    result = CliRunner().invoke(main, ["compare", *paths])
    assert result.exit_code == 0, result.output
    assert runs_of(result.stdout) == ["baseline", "lr=1e-5", "lr=2e-5", "lr=3e-5"]
    assert result.stderr.splitlines() == [f"note: skipped {root / 'summary.jsonl'}: the sweep's summary, not a run",
                                          f"note: skipped {root / 'summary.md'}: the sweep's summary, not a run"]


def test_compare_an_interrupted_sweep_skips_its_unfinished_run(tmp_path):
    root = fake_sweep(tmp_path / "toy-sweep")
    (root / "lr=2e-5" / "best.json").unlink()
    result = CliRunner().invoke(main, ["compare", str(root)])
    assert result.exit_code == 0, result.output
    assert runs_of(result.stdout) == ["lr=3e-5", "lr=1e-5"]
    assert "note: skipped" in result.stderr and "lr=2e-5: no best.json" in result.stderr
    for run in ("lr=3e-5", "lr=1e-5"):
        (root / run / "best.json").unlink()
    result = CliRunner().invoke(main, ["compare", str(root)])
    assert result.exit_code == 2 and "is a sweep with no finished run yet" in result.stderr


def test_compare_refuses_other_files_and_missing_paths(tmp_path):
    run = fake_run(tmp_path / "baseline", 0.5, 0.4, 0.7)
    (tmp_path / "notes.txt").write_text("x")
    result = CliRunner().invoke(main, ["compare", str(run), str(tmp_path / "notes.txt")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"mtbert: error: {tmp_path / 'notes.txt'} is a file, not a run directory")
    (run / "summary.jsonl").write_text("{}\n")  # a run's own directory is never a sweep's
    result = CliRunner().invoke(main, ["compare", str(run / "summary.jsonl")])
    assert result.exit_code == 2 and "is a file, not a run directory" in result.stderr
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "nowhere does not exist" in result.stderr
