"""mtbert.load(run).predict(task, inputs): in-memory prediction equal to the run's own dev predictions."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mtbert
from mtbert.base.errors import MtbertError
from mtbert.runs.rundir import RunDir
from mtbert.training.loop import Trainer

from helpers import toy_data, toy_spec



@pytest.fixture(scope="module")
def run(tmp_path_factory, registry):
    tmp_path = tmp_path_factory.mktemp("api")
    data = toy_data(tmp_path / "data", n=96)
    spec = toy_spec(registry, data, steps=6, eval_every=6)  # one evaluation: it writes the dev predictions
    run = RunDir.create(spec, str(tmp_path / "run"))
    Trainer(spec, registry, progress=False).fit(run)
    return run.path, data


def rows(path):
    """A toy TSV file as lists of fields (header dropped)."""
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


def dev_predictions(run_path, task):
    lines = (run_path / "predictions" / f"{task}-dev-output.csv").read_text().splitlines()[1:]
    return [line.split(" , ") for line in lines]


@pytest.fixture(scope="module")
def model(run):
    return mtbert.load(run[0])


def test_import_is_light_and_load_is_the_api():
    code = ("import sys, mtbert; assert 'torch' not in sys.modules; "
            "from mtbert.commands.api import load; assert mtbert.load is load")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_single_sentence_predictions_equal_the_dev_file(run, model):
    run_path, data = run
    assert model.tasks == ["sent", "count"]
    texts = [fields[1] for fields in rows(data / "sent.tsv")]
    expected = dev_predictions(run_path, "sent")
    assert [ident.strip() for ident, _ in expected] == [fields[0] for fields in rows(data / "sent.tsv")]
    predicted = model.predict("sent", texts)
    assert all(type(p) is int for p in predicted)
    assert predicted == [int(value) for _, value in expected]
    assert len(set(predicted)) == 2  # both classes occur, so the comparison says something about order
    # input order is kept, whatever the batching
    assert model.predict("sent", texts[::-1], batch_size=5) == predicted[::-1]


def test_pair_predictions_equal_the_dev_file(run, model):
    run_path, data = run
    pairs = [(fields[1], fields[2]) for fields in rows(data / "pairs.tsv")]
    predicted = model.predict("count", pairs)
    expected = [float(value) for _, value in dev_predictions(run_path, "count")]
    assert all(type(p) is float for p in predicted) and len(predicted) == len(expected)
    assert max(abs(p - e) for p, e in zip(predicted, expected)) < 1e-5
    assert max(expected) - min(expected) > 1e-3  # the scores differ between examples
    assert model.predict("count", [list(pairs[3])]) == pytest.approx([predicted[3]], abs=1e-5)
    assert model.predict("count", []) == []


def test_mistakes_are_clear_errors(model, tmp_path):
    with pytest.raises(MtbertError, match="unknown task 'nli'; this run has: sent, count"):
        model.predict("nli", ["a"])
    with pytest.raises(MtbertError, match="'sent' takes single sentences.*input 1 is tuple"):
        model.predict("sent", ["fine", ("a", "pair")])
    with pytest.raises(MtbertError, match="'count' takes sentence pairs.*input 0 is str"):
        model.predict("count", ["just one sentence"])
    with pytest.raises(MtbertError, match="a list of sentences, got str.*wrap"):
        model.predict("sent", "a bare string")
    with pytest.raises(MtbertError, match="not an mtbert run directory"):
        mtbert.load(tmp_path)
