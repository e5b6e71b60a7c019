"""mtbert report: learning curves, confusion matrices and a scatter plot of a tiny three-task run."""

from __future__ import annotations

import json
import math
import re
import tomllib

import numpy as np
import pytest
import tomli_w

from mtbert.base.errors import MtbertError
from mtbert.commands.report import confusion_matrix, make_report, pearson, read_train_losses
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import load_spec
from mtbert.training.loop import Trainer

from helpers import ROOT, TINY_ENCODER, mtbert


LIMIT = 200  # rows per file
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory, registry, data_dir):
    """examples/baseline.toml on the tiny encoder and the first LIMIT rows of the course files;
    21 round-robin steps, losses logged every 2, three evaluations."""
    tmp_path = tmp_path_factory.mktemp("report")
    data = tomllib.loads((ROOT / "examples" / "baseline.toml").read_text())
    data["encoder"] = dict(TINY_ENCODER)
    data["data"]["dir"] = str(data_dir)
    data["train"].update(epochs=1, lr=1e-3, log_every=2, eval_every=7)
    for task in data["tasks"].values():
        task["data"]["limit"] = LIMIT
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(data))
    spec = load_spec(path, registry, env={})
    run = RunDir.create(spec, tmp_path / "run")
    Trainer(spec, registry, progress=False).fit(run)
    return run.path


@pytest.fixture(scope="module")
def report(run, registry):
    return make_report(run, registry=registry)


def predictions(run, task):
    return (run / "predictions" / f"{task}-dev-output.csv").read_text().splitlines()[1:]


def test_confusion_matrix_by_hand():
    matrix = confusion_matrix([0, 1, 2, 2, 1, 0], [0, 2, 2, 2, 0, 0], 3)
    assert matrix.tolist() == [[2, 0, 0], [1, 0, 1], [0, 0, 2]]  # row = true, column = predicted
    assert confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="prediction 3 is not a class in 0..2"):
        confusion_matrix([0, 1], [0, 3], 3)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(np.corrcoef([1, 2, 3, 4], [2, 4, 5, 9])[0, 1])
    assert math.isnan(pearson([1, 2, 3], [5, 5, 5]))


def test_report_links_valid_pictures(run, report):
    assert report.path == run / "report" / "report.md"
    text = report.path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(links) == {"overall.png", "curves-sst.png", "curves-para.png", "curves-sts.png",
                          "confusion-sst.png", "confusion-para.png", "scatter-sts.png"}
    for link in links:
        picture = report.path.parent / link  # relative to report.md
        data = picture.read_bytes()
        assert data[:8] == PNG and len(data) > 1000, link
    assert sorted(p.name for p in report.images) == sorted(links)
    assert not report.notes, report.notes


def test_report_text_has_the_best_evaluation_and_settings(run, report):
    text = report.path.read_text()
    best = json.loads((run / "best.json").read_text())
    assert text.startswith("# Report: baseline")
    assert f"overall score **{best['overall']:.4f}**" in text
    assert f"| sst | {best['tasks']['sst']['accuracy']:.4f} | {best['tasks']['sst']['f1']:.4f} | - | - |" in text
    for setting in ("| encoder | `minbert` (pretrained=minilm-l6, init=random", "| sampler | `round_robin` |",
                    "| gradient method | `sum` |", "| adapters | none |", "| regularizers | none |",
                    "| phase train | tasks sst, para, sts; 1 epoch(s); trainable all; lr 0.001"):
        assert setting in text, setting


def test_confusion_matrices_and_scatter_agree_with_the_run(run, report):
    best = json.loads((run / "best.json").read_text())
    sst, para = report.confusions["sst"], report.confusions["para"]
    assert sst.shape == (5, 5) and para.shape == (2, 2) and set(report.confusions) == {"sst", "para"}
    assert sst.sum() == len(predictions(run, "sst")) == LIMIT
    assert para.sum() == len(predictions(run, "para"))
    # the diagonal is what the run scored as accuracy at its best evaluation
    assert np.trace(sst) / sst.sum() == pytest.approx(best["tasks"]["sst"]["accuracy"])
    assert np.trace(para) / para.sum() == pytest.approx(best["tasks"]["para"]["accuracy"])
    # column sums are the predictions' class counts
    counts = np.bincount([int(line.split(" , ")[1]) for line in predictions(run, "sst")], minlength=5)
    assert sst.sum(axis=0).tolist() == counts.tolist()
    assert set(report.correlations) == {"sts"}  # predictions are rounded to 6 decimals in the file
    assert report.correlations["sts"] == pytest.approx(best["tasks"]["sts"]["pearson"], abs=1e-3)
    table = "| true \\ predicted | 0 | 1 |\n|---|---|---|\n" + "\n".join(
        f"| {i} | {para[i, 0]} | {para[i, 1]} |" for i in range(2))
    assert table in report.path.read_text()


def test_training_losses_come_from_tensorboard(run):
    losses = read_train_losses(run / "tb")
    assert set(losses) == {"sst", "para", "sts"}
    for task, points in losses.items():
        steps = [s for s, _ in points]
        assert len(points) >= 5 and steps == sorted(steps), task
        assert all(math.isfinite(v) and v > 0 for _, v in points)


def test_a_missing_dev_file_skips_its_pictures_with_a_note(run, registry, tmp_path):
    written = make_report(run, tmp_path / "out", registry=registry, data_dir=tmp_path / "elsewhere")
    text = written.path.read_text()
    assert not written.confusions and not written.correlations
    assert {p.name for p in written.images} == {"overall.png", "curves-sst.png", "curves-para.png",
                                                "curves-sts.png"}
    assert f"sst: no picture: {tmp_path / 'elsewhere' / 'ids-sst-dev.csv'}: dev file not found" in text
    assert len(written.notes) == 3 and "--data DIR" in written.notes[0]


def test_not_a_run_and_no_metrics_are_errors(registry, tmp_path, run):
    with pytest.raises(MtbertError, match="not an mtbert run directory"):
        make_report(tmp_path, registry=registry)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "spec.toml").write_text((run / "spec.toml").read_text())
    with pytest.raises(MtbertError, match="has no evaluations yet"):
        make_report(fresh, registry=registry)
    assert not (fresh / "report").exists()


def test_cli(run, tmp_path):
    ok = mtbert("report", run, "--out", tmp_path / "rep")
    assert ok.returncode == 0, ok.stderr
    assert "report.md (7 picture(s))" in ok.stdout
    assert "No path found" not in ok.stderr  # tensorboard's event reader logs it at INFO: not a line of ours
    assert (tmp_path / "rep" / "scatter-sts.png").read_bytes()[:8] == PNG
    bad = mtbert("report", tmp_path / "rep")
    assert bad.returncode == 2
    assert "not an mtbert run directory (no spec.toml)" in bad.stderr and "Traceback" not in bad.stderr
