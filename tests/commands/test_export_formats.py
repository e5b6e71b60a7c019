"""mtbert export --format transformers / sentence-transformers / onnx, and Model.embed: each
export round-trips through the library it is for and gives mtbert's outputs."""

from __future__ import annotations

import json

import pytest
import torch

from mtbert.base.errors import MtbertError
from mtbert.commands.export import export
from mtbert.runs.finished import open_run
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec, unstructure
from mtbert.training.loop import Trainer

from helpers import mtbert, toy_data, toy_spec

import mtbert as mtbert_api

TEXTS = ["the movie was good", "a much longer sentence, with several more words and punctuation !", "bad",
         "Un film très émouvant."]
PAIRS = [("the film was good", "a good film"), ("wow wow wow", "the plot"), ("short", "a much longer one here")]


def make_run(registry, root, name, heads: dict, adapters=(), encoder=None, steps=6):
    data_dir = toy_data(root / "data")
    if not (data_dir / "dup.tsv").is_file():  # binary pairs: more than one "wow" in the first sentence
        lines = (data_dir / "pairs.tsv").read_text().splitlines()
        dup = ["id\ts1\ts2\tdup"] + [f"{r.split(chr(9))[0]}\t{r.split(chr(9))[1]}\t{r.split(chr(9))[2]}\t"
                                     f"{int(int(r.split(chr(9))[3]) > 1)}" for r in lines[1:]]
        (data_dir / "dup.tsv").write_text("\n".join(dup) + "\n")
    data = unstructure(toy_spec(registry, data_dir, steps=steps, eval_every=steps))
    tasks = data["tasks"]
    tasks["sent"]["head"] = heads["sent"]
    tasks["count"]["head"] = heads["count"]
    if heads["count"]["name"] == "cosine":
        tasks["count"]["loss"], tasks["count"]["metrics"] = "cosine_mse", ["pearson"]
    if "dup" in heads:
        tasks["dup"] = {"data": {"train": "dup.tsv", "dev": "dup.tsv", "text": "s1", "text_pair": "s2",
                                 "label": "dup"},
                        "head": heads["dup"], "loss": "bce", "metrics": ["accuracy"]}
    data.update(name=name, adapters=list(adapters))
    if encoder is not None:
        data["encoder"] = encoder
    spec = structure_spec(data, registry)
    run = RunDir.create(spec, str(root / name))
    Trainer(spec, registry, progress=False).fit(run)
    return run.path


POOLER = {"sent": {"name": "classifier", "num_labels": 2, "pooling": "pooler"},
          "count": {"name": "regression", "pooling": "pooler", "low": 0.0, "high": 3.0},
          "dup": {"name": "binary", "pooling": "pooler"}}
BI = {"sent": {"name": "classifier", "num_labels": 2, "pooling": "mean"},
      "count": {"name": "cosine", "high": 3.0, "pooling": "mean"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, registry):
    root = tmp_path_factory.mktemp("formats")
    return {"pooler": make_run(registry, root, "pooler", POOLER, steps=150),
            "bi": make_run(registry, root, "bi", BI),
            "pals": make_run(registry, root, "pals", BI, adapters=[{"name": "pals"}]),
            "lora": make_run(registry, root, "lora", POOLER, adapters=[{"name": "lora", "r": 4, "alpha": 8.0}])}


def head_outputs(run, task, inputs):
    """mtbert's own head outputs for a list of texts or pairs (the numbers every export must give)."""
    from mtbert.data.splits import texts_split
    from mtbert.model.build import pair_encoding
    from mtbert.training.prediction import eval_batches

    opened = open_run(run)
    model, spec = opened.model, opened.spec
    texts = [x[0] if isinstance(x, tuple) else x for x in inputs]
    pairs = [x[1] for x in inputs] if isinstance(inputs[0], tuple) else None
    split = texts_split(task, texts, pairs, model.encoder.tokenizer, spec.data.max_length,
                        pair_encoding(opened.registry, spec.tasks[task].head))
    out = [None] * len(texts)
    with torch.no_grad():
        for batch in eval_batches(split, 64, 0):
            for i, value in zip(batch["index"].tolist(), model(task, batch)):
                out[i] = value
    return torch.stack(out)


def dev_texts(run, n=50):
    lines = (run.parent / "data" / "sent.tsv").read_text()  # the dev file of the toy runs
    return [line.split("\t")[1] for line in lines.splitlines()[1:n + 1]]


def test_classifier_through_pipeline_gives_mtberts_labels_and_logits(runs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    out = tmp_path / "sst"
    exported = export(runs["pooler"], out, task="sent", fmt="transformers")
    assert exported.model_type == "bert" and "pipeline" in exported.load
    texts = dev_texts(runs["pooler"])
    labels = pipeline("text-classification", model=str(out), device="cpu")(texts)
    ours = mtbert_api.load(runs["pooler"]).predict("sent", texts)
    assert [int(r["label"].split("_")[1]) for r in labels] == ours
    assert len(set(ours)) == 2  # both classes occur: the comparison can fail
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert torch.allclose(logits, head_outputs(runs["pooler"], "sent", texts), atol=1e-4, rtol=0)
    config = json.loads((out / "config.json").read_text())
    assert config["num_labels"] == 2 if "num_labels" in config else len(config["id2label"]) == 2
    assert config["problem_type"] == "single_label_classification"


@pytest.mark.parametrize("task", ["count", "dup"])
def test_pair_heads_through_cross_encoder_give_mtberts_scores(runs, tmp_path, task):
    from sentence_transformers import CrossEncoder

    out = tmp_path / task
    export(runs["pooler"], out, task=task, fmt="transformers")
    scores = torch.as_tensor(CrossEncoder(str(out), device="cpu").predict(PAIRS))
    assert torch.allclose(scores.float(), head_outputs(runs["pooler"], task, PAIRS), atol=1e-4, rtol=0)
    if task == "count":  # mtbert's predictions are the scores clipped to the label range
        predicted = torch.tensor(mtbert_api.load(runs["pooler"]).predict(task, PAIRS))
        assert torch.allclose(scores.clamp(0, 3).float(), predicted, atol=1e-4)
        assert json.loads((out / "config.json").read_text())["problem_type"] == "regression"


def test_sentence_transformers_export_equals_embed(runs, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = mtbert_api.load(runs["bi"])
    out = tmp_path / "st"
    export(runs["bi"], out, task="count", fmt="sentence-transformers")
    theirs = torch.as_tensor(SentenceTransformer(str(out), device="cpu").encode(TEXTS))
    ours = model.embed(TEXTS, task="count")
    assert ours.shape == (len(TEXTS), 32)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)  # cosine head: unit vectors
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0)
    # the cosine of two exported vectors is the head's output
    u, v = model.embed([PAIRS[0][0]], task="count"), model.embed([PAIRS[0][1]], task="count")
    assert torch.allclose((u * v).sum(), head_outputs(runs["bi"], "count", [PAIRS[0]])[0], atol=1e-5)
    plain = tmp_path / "st-encoder"
    export(runs["bi"], plain, fmt="sentence-transformers")  # the encoder alone, mean pooling
    theirs = torch.as_tensor(SentenceTransformer(str(plain), device="cpu").encode(TEXTS))
    ours = model.embed(TEXTS)
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0) and not torch.allclose(ours.norm(dim=-1),
                                                                                   torch.ones(len(TEXTS)))


@pytest.mark.parametrize("run,task,inputs", [("pooler", "sent", TEXTS), ("pooler", "count", PAIRS),
                                             ("bi", "count", PAIRS), ("pals", "sent", TEXTS)])
def test_onnx_under_onnxruntime_gives_mtberts_outputs(runs, tmp_path, run, task, inputs):
    onnxruntime = pytest.importorskip("onnxruntime")
    from transformers import AutoTokenizer

    out = tmp_path / "onnx"
    export(runs[run], out, task=task, fmt="onnx")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs[0], tuple) and "input_ids_b" in names:  # bi-encoded: each sentence alone
        a = tokenizer([x[0] for x in inputs], padding=True, return_tensors="np", return_token_type_ids=True)
        b = tokenizer([x[1] for x in inputs], padding=True, return_tensors="np", return_token_type_ids=True)
        feed = {**{k: a[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                **{k + "_b": b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}}
    else:
        pairs = [x[1] for x in inputs] if isinstance(inputs[0], tuple) else None
        texts = [x[0] for x in inputs] if pairs else inputs
        enc = tokenizer(texts, pairs, padding=True, return_tensors="np", return_token_type_ids=True)
        feed = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    theirs = torch.from_numpy(session.run(None, feed)[0])
    assert torch.allclose(theirs, head_outputs(runs[run], task, inputs), atol=1e-4, rtol=0)


def test_lora_is_merged_into_the_classifier_export(runs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "lora"
    exported = export(runs["lora"], out, task="count", fmt="transformers")
    assert any("LoRA merged" in note for note in exported.notes)
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    enc = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = model(**enc).logits.squeeze(-1)
    assert torch.allclose(scores, head_outputs(runs["lora"], "count", PAIRS), atol=1e-4, rtol=0)


def test_heads_that_do_not_map_are_refused_with_the_formats_that_would(runs, tmp_path):
    with pytest.raises(MtbertError) as caught:
        export(runs["bi"], tmp_path / "a", task="sent", fmt="transformers")
    message = str(caught.value)
    assert "pooling = \"mean\"" in message and "tanh pooler" in message
    assert "formats that take it: onnx, sentence-transformers" in message
    with pytest.raises(MtbertError, match="cosine head compares two sentences encoded apart"):
        export(runs["bi"], tmp_path / "b", task="count", fmt="transformers")
    with pytest.raises(MtbertError, match="adapter \"pals\""):
        export(runs["pals"], tmp_path / "c", task="count", fmt="sentence-transformers")
    with pytest.raises(MtbertError, match="one joint sequence"):  # a cross-encoded pair task's vectors
        export(runs["pooler"], tmp_path / "f", task="count", fmt="sentence-transformers")
    with pytest.raises(MtbertError, match="give --task"):
        export(runs["bi"], tmp_path / "d", fmt="transformers")
    assert not any((tmp_path / n).exists() for n in "abcd")
    result = mtbert("export", runs["bi"], tmp_path / "e", "--task", "sent", "--format", "transformers")
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.splitlines()) <= 6 and "formats that take it" in result.stderr
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("fmt,task", [("encoder", None), ("transformers", "sent"),
                                      ("sentence-transformers", None), ("onnx", "count")])
def test_every_export_has_a_model_card(runs, tmp_path, fmt, task):
    out = tmp_path / "card"
    export(runs["pooler"], out, task=task, fmt=fmt)
    card = (out / "README.md").read_text()
    best = json.loads((runs["pooler"] / "best.json").read_text())
    assert card.startswith("---\nlibrary_name: ") and "base_model" not in card  # a random initialisation
    assert f"accuracy {best['tasks']['sent']['accuracy']:.4f}" in card  # the best dev metrics
    assert "## How to load" in card and "```toml" in card and 'name = "pooler"' in card
    if task:
        assert f"| {task} (this export) |" in card


def test_embed_checks_its_input(runs):
    model = mtbert_api.load(runs["bi"])
    with pytest.raises(MtbertError, match="wrap a single sentence"):
        model.embed("one sentence")
    with pytest.raises(MtbertError, match="sentence 1 is int"):
        model.embed(["ok", 3])
    with pytest.raises(MtbertError, match="unknown task"):
        model.embed(["ok"], task="nope")
    assert model.embed([]).shape == (0, 32)


def test_real_minilm_exports_as_sentence_transformer_and_onnx(registry, tmp_path):
    from sentence_transformers import SentenceTransformer

    encoder = {"name": "minbert", "pretrained": "minilm-l6"}
    run = make_run(registry, tmp_path, "minilm", BI, encoder=encoder, steps=1)
    export(run, tmp_path / "st", task="count", fmt="sentence-transformers")
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in (tmp_path / "st" / "README.md").read_text()
    theirs = torch.as_tensor(SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(TEXTS))
    assert torch.allclose(theirs, mtbert_api.load(run).embed(TEXTS, task="count"), atol=1e-5, rtol=0)
    export(run, tmp_path / "onnx", task="count", fmt="onnx")  # checked against mtbert while writing
    assert (tmp_path / "onnx" / "model.onnx").stat().st_size > 20_000_000


def test_real_minilm_classifier_through_pipeline_and_cross_encoder(registry, tmp_path):
    from sentence_transformers import CrossEncoder
    from transformers import pipeline

    encoder = {"name": "minbert", "pretrained": "minilm-l6"}
    run = make_run(registry, tmp_path, "minilm-pooler", POOLER, encoder=encoder, steps=1)
    export(run, tmp_path / "sent", task="sent", fmt="transformers")
    texts = dev_texts(run, 20)
    labels = pipeline("text-classification", model=str(tmp_path / "sent"), device="cpu")(texts)
    assert [int(r["label"].split("_")[1]) for r in labels] == mtbert_api.load(run).predict("sent", texts)
    export(run, tmp_path / "count", task="count", fmt="transformers")
    scores = torch.as_tensor(CrossEncoder(str(tmp_path / "count"), device="cpu").predict(PAIRS))
    assert torch.allclose(scores.float(), head_outputs(run, "count", PAIRS), atol=1e-4, rtol=0)


LONG = [("wow " * 40 + "the plot was long", "a film " * 30), ("short", "wow wow")]  # far past max_length 16


@pytest.mark.parametrize("run,fmt,task", [("pooler", "encoder", None), ("pooler", "transformers", "sent"),
                                          ("pooler", "transformers", "dup"), ("bi", "sentence-transformers", "count"),
                                          ("bi", "onnx", "count")],
                         ids=["encoder", "pipeline", "cross-encoder", "sentence-transformers", "onnx-bi"])
def test_every_card_snippet_runs_as_written_from_the_export(runs, tmp_path, run, fmt, task):
    """The card's Python block, run in a fresh process from another folder, loads the export where
    it was put (not the temporary it was written in) and says what the output means."""
    import os
    import subprocess
    import sys

    out = tmp_path / "exported"
    export(runs[run], out, task=task, fmt=fmt)
    card = (out / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("\n```", 1)[0]
    assert ".export-" not in code and str(out) in code
    assert code.splitlines()[-1].startswith("# ")  # the last line says what the output is
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if fmt == "sentence-transformers":
        assert "3 x cos(u, v)" in card  # the cosine head's scale (high = 3)


def test_exports_truncate_where_mtbert_does(runs, tmp_path):
    """Trained at max_length 16: the export's tokenizer says 16, so CrossEncoder reads what mtbert reads."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer

    out = tmp_path / "count"
    export(runs["pooler"], out, task="count", fmt="transformers")
    assert AutoTokenizer.from_pretrained(str(out)).model_max_length == 16
    scores = torch.as_tensor(CrossEncoder(str(out), device="cpu").predict(LONG))
    assert torch.allclose(scores.float(), head_outputs(runs["pooler"], "count", LONG), atol=1e-4, rtol=0)
    for fmt in ("encoder", "onnx"):
        export(runs["pooler"], tmp_path / fmt, task="count" if fmt == "onnx" else None, fmt=fmt)
        assert AutoTokenizer.from_pretrained(str(tmp_path / fmt)).model_max_length == 16


def test_a_binary_export_carries_the_positive_labels_name(runs, tmp_path):
    import shutil

    from transformers import pipeline

    run = tmp_path / "named"
    shutil.copytree(runs["pooler"], run)
    spec = (run / "spec.toml").read_text()
    marker = 'label = "dup"'
    assert marker in spec
    (run / "spec.toml").write_text(spec.replace(marker, marker + '\nlabel_names = ["different", "duplicate"]', 1))
    out = tmp_path / "dup"
    export(run, out, task="dup", fmt="transformers")
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "duplicate"}
    answers = pipeline("text-classification", model=str(out), device="cpu")(
        [{"text": a, "text_pair": b} for a, b in PAIRS])
    logits = head_outputs(runs["pooler"], "dup", PAIRS)
    assert [a["label"] for a in answers] == ["duplicate"] * len(PAIRS)
    assert torch.allclose(torch.tensor([a["score"] for a in answers]), torch.sigmoid(logits), atol=1e-4)
    card = (out / "README.md").read_text()
    assert "above 0 means 'duplicate'" in card
