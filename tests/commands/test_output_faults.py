"""Every output outside the run directory under faults: complete or absent, one message, the previous
file whole, no temporary left; and the command-line mistakes around them."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from mtbert.commands.cli import main
from mtbert.commands.report import make_report

from helpers import finished_toy_run

FULL = "No space left on device"


@pytest.fixture(scope="module")
def finished(registry, tmp_path_factory):
    """A finished toy run and its data folder."""
    return finished_toy_run(registry, tmp_path_factory.mktemp("outputs"))


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def leftovers(folder):
    """Temporaries a write could leave behind."""
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith((".report-", ".out"))]


def previous(name, text="the previous output\n"):
    def prepare(folder):
        (folder / name).write_text(text)
    return prepare


def test_predict_on_a_full_disk_keeps_the_previous_output(finished, full_disk):
    run, data = finished
    folder = full_disk(previous("out.csv"))
    result = invoke("predict", run, "--task", "sent", "--input", data / "sent.tsv", "--output", folder / "out.csv")
    assert result.exit_code == 2, result.output
    assert f"could not write predictions into {folder / 'out.csv'}: {FULL}" in result.output
    assert (folder / "out.csv").read_text() == "the previous output\n"
    assert leftovers(folder) == []


def test_compare_on_a_full_disk_keeps_the_previous_table(finished, full_disk):
    run, _ = finished
    folder = full_disk(previous("table.md"))
    result = invoke("compare", run, "--output", folder / "table.md")
    assert result.exit_code == 2 and f"could not write the comparison table into {folder / 'table.md'}: {FULL}" \
        in result.output, result.output
    assert (folder / "table.md").read_text() == "the previous output\n" and leftovers(folder) == []


def test_report_on_a_full_disk_keeps_the_previous_report(finished, full_disk):
    run, _ = finished
    folder = full_disk(previous("report.md"))
    result = invoke("report", run, "--out", folder)
    assert result.exit_code == 2, result.output
    assert f"could not write the report into {folder}: {FULL}" in result.output
    assert (folder / "report.md").read_text() == "the previous output\n"
    assert sorted(p.name for p in folder.iterdir()) == [".ballast", "report.md"] or leftovers(folder) == []


def test_export_on_a_full_disk_leaves_nothing(finished, full_disk):
    run, _ = finished
    folder = full_disk()
    result = invoke("export", run, folder / "exported")
    assert result.exit_code == 2, result.output
    assert f"could not write the export into {folder / 'exported'}: {FULL}" in result.output
    assert not (folder / "exported").exists() and [p.name for p in folder.iterdir() if p.name != ".ballast"] == []


def test_predict_never_writes_over_its_input(finished, tmp_path):
    run, data = finished
    target = tmp_path / "in.tsv"
    shutil.copy(data / "sent.tsv", target)
    before = target.read_bytes()
    result = invoke("predict", run, "--task", "sent", "--input", target, "--output", tmp_path / "." / "in.tsv")
    assert result.exit_code == 2 and "is the input file" in result.output, result.output
    assert target.read_bytes() == before


@pytest.mark.parametrize("args, expected", [
    (["--batch-size", "0"], "0 is not in the range x>=1"),
    (["--device", "cuda"], "no CUDA device is available"),
    (["--device", "tpu9"], "is not a torch device"),
], ids=["batch-size-0", "cuda-without-cuda", "no-such-device"])
def test_predict_options_are_checked(finished, tmp_path, args, expected):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run, data = finished
    result = invoke("predict", run, "--task", "sent", "--input", data / "sent.tsv", "--output", tmp_path / "o.csv",
                    *args)
    assert result.exit_code == 2 and expected in result.output, result.output
    assert not (tmp_path / "o.csv").exists()


def test_predict_output_in_a_new_folder_or_under_a_file(finished, tmp_path):
    run, data = finished
    made = invoke("predict", run, "--task", "sent", "--input", data / "sent.tsv", "--output", tmp_path / "new" / "o.csv")
    assert made.exit_code == 0 and (tmp_path / "new" / "o.csv").is_file(), made.output
    (tmp_path / "afile").write_text("x")
    bad = invoke("predict", run, "--task", "sent", "--input", data / "sent.tsv", "--output", tmp_path / "afile" / "o")
    assert bad.exit_code == 2 and "a part of that path is a file" in bad.output, bad.output
    assert (tmp_path / "afile").read_text() == "x"


def damaged_copy(run, tmp_path, edit):
    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    edit(copy)
    return copy


def _rewrite_metrics(change):
    def edit(run):
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        (run / "metrics.jsonl").write_text("".join(json.dumps(change(r)) + "\n" for r in lines))
    return edit


def _prediction(value):
    def edit(run):
        path = run / "predictions" / "count-dev-output.csv"
        lines = path.read_text().splitlines()
        ident = lines[1].split(",")[0].strip()
        lines[1] = f"{ident} , {value} "
        path.write_text("\n".join(lines) + "\n")
    return edit


DAMAGED_RUNS = {
    "metrics without overall": (_rewrite_metrics(lambda r: {k: v for k, v in r.items() if k != "overall"}),
                                "has no evaluations yet"),
    "metrics tasks a list": (_rewrite_metrics(lambda r: {**r, "tasks": [1, 2]}), "has no evaluations yet"),
    "metrics a string score": (_rewrite_metrics(lambda r: {**r, "tasks": {"sent": {"accuracy": "high"}}}),
                               "has no evaluations yet"),
    "best.json a list": (lambda run: (run / "best.json").write_text("[]"), None),
    "best.json a string overall": (lambda run: (run / "best.json").write_text('{"overall": "x"}'), None),
    "a 1e30 prediction": (_prediction("1e30"), None),
    "an inf prediction": (_prediction("inf"), None),
    "a word as a prediction": (_prediction("high"), None),
}


@pytest.mark.parametrize("damage", list(DAMAGED_RUNS))
def test_report_on_a_damaged_run(registry, finished, tmp_path, damage):
    run, data = finished
    edit, refused = DAMAGED_RUNS[damage]
    copy = damaged_copy(run, tmp_path, edit)
    result = invoke("report", copy, "--data", data)
    if refused:
        assert result.exit_code == 2 and refused in result.output, result.output
        return
    assert result.exit_code == 0, result.output
    assert (copy / "report" / "report.md").is_file() and leftovers(copy / "report") == []
    if "prediction" in damage:
        written = make_report(copy, tmp_path / "again", registry=registry, data_dir=data)
        assert any("count" in note for note in written.notes), written.notes


def test_compare_on_a_damaged_best(finished, tmp_path):
    run, _ = finished
    copy = damaged_copy(run, tmp_path, lambda r: (r / "best.json").write_text("[]"))
    result = invoke("compare", copy)
    assert result.exit_code == 2 and "is damaged" in result.output, result.output


@pytest.mark.parametrize("command", ["predict", "compare", "report", "export"])
def test_temporaries_of_killed_writers_are_swept_and_a_live_ones_kept(finished, tmp_path, command):
    """A writer killed mid-write (SIGKILL: no cleanup) leaves its temporary; the next write of the same
    output removes it (its pid is dead) and leaves a live writer's alone."""
    import os
    import subprocess
    import sys

    run, data = finished
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    folder = tmp_path / "out"
    folder.mkdir()
    name, kind, args = {
        "predict": ("o.csv", "tmp", ["predict", run, "--task", "sent", "--input", data / "sent.tsv", "--output",
                                     folder / "o.csv"]),
        "compare": ("t.md", "tmp", ["compare", run, "--output", folder / "t.md"]),
        "report": (None, "report", ["report", run, "--out", folder, "--data", data]),
        "export": ("exported", "export", ["export", run, folder / "exported"]),
    }[command]
    prefix = f".{name}.{kind}-" if name else ".report-"
    stale, live = folder / f"{prefix}{dead}-0000aaaa", folder / f"{prefix}{os.getpid()}-0000bbbb"
    for leftover in (stale, live):
        leftover.mkdir() if command in ("report", "export") else leftover.write_text("half")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.exists()
