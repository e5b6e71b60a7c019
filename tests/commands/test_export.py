"""mtbert export: a trained encoder as a Hugging Face model that reproduces mtbert's encoder output."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mtbert.base.errors import MtbertError
from mtbert.commands.export import export
from mtbert.commands.inference import Predictor
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec, unstructure
from mtbert.training.loop import Trainer

from helpers import toy_data, toy_spec, mtbert, TINY_ROBERTA


TEXTS = ["the movie was good", "a much longer sentence, with several more words and punctuation !", "bad"]
PAIRS = ["its pair", "short", "and a second sentence that is longer than the first"]


def make_run(registry, tmp_path, name, train=True, steps=4, **changes):
    """A toy two-task run on the tiny encoder, with top-level keys of the spec data replaced."""
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data"), steps=steps, eval_every=steps))
    data.update(name=name, **changes)
    spec = structure_spec(data, registry)
    run = RunDir.create(spec, str(tmp_path / name))
    if train:
        Trainer(spec, registry, progress=False).fit(run)
    return run.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, registry):
    tmp_path = tmp_path_factory.mktemp("export")
    return {
        "plain": make_run(registry, tmp_path, "plain"),
        # trainable = "all": both W and the LoRA factors move, so the merge must add B A to a trained W
        "lora": make_run(registry, tmp_path, "lora", adapters=[{"name": "lora", "r": 4, "alpha": 8.0}]),
        "pals": make_run(registry, tmp_path, "pals", train=False, adapters=[{"name": "pals"}]),
    }


def assert_reproduces(run, out, uses_token_types=True):
    """The exported model's last_hidden_state (and pooler output) equal mtbert's encoder output."""
    from transformers import AutoModel, AutoTokenizer

    encoder = Predictor.load(run).model.encoder  # the run as mtbert rebuilds it (adapters wrapped), eval mode
    hf, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = encoder.tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")
    exported = AutoTokenizer.from_pretrained(str(out))(TEXTS, PAIRS, padding=True, return_tensors="pt")
    assert all(torch.equal(batch[k], exported[k]) for k in ("input_ids", "attention_mask"))
    assert batch["attention_mask"].min() == 0  # the batch really has padding
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if uses_token_types:
        inputs["token_type_ids"] = batch["token_type_ids"]
    with torch.no_grad():
        ours = encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        theirs = hf(**inputs)
    mask = batch["attention_mask"].bool()
    assert ours.states.shape == theirs.last_hidden_state.shape
    assert (ours.states - theirs.last_hidden_state)[mask].abs().max() < 1e-5
    assert (ours.pooled - theirs.pooler_output).abs().max() < 1e-5
    return hf


def test_exported_bert_reproduces_the_encoder(runs, tmp_path):
    out = tmp_path / "hf"
    result = export(runs["plain"], out)
    assert result.path == out and result.model_type == "bert"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    names = set(load_file(str(out / "model.safetensors")))
    assert "encoder.layer.1.attention.self.query.weight" in names and "pooler.dense.weight" in names
    hf = assert_reproduces(runs["plain"], out)
    assert type(hf).__name__ == "BertModel" and hf.config.hidden_size == 32 and hf.config.num_hidden_layers == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_lora_is_merged_into_the_weights(runs, tmp_path):
    checkpoint = load_file(str(runs["lora"] / "checkpoint" / "model.safetensors"))
    factors_b = [v for k, v in checkpoint.items() if k.startswith("adapters.0.") and k.endswith(".B")]
    assert len(factors_b) == 4 and all(b.abs().max() > 1e-4 for b in factors_b)  # the update is not zero
    out = tmp_path / "hf"
    result = export(runs["lora"], out)
    assert any("LoRA merged" in note and "4 linear" in note for note in result.notes)
    exported = load_file(str(out / "model.safetensors"))
    base = checkpoint["encoder.layers.0.attention.query.weight"]
    assert (exported["encoder.layer.0.attention.self.query.weight"] - base).abs().max() > 1e-5  # W changed
    assert torch.equal(exported["encoder.layer.0.attention.self.key.weight"],
                       checkpoint["encoder.layers.0.attention.key.weight"])  # not a target: as trained
    assert not any("factors" in k or "lora" in k.lower() for k in exported)
    assert_reproduces(runs["lora"], out)


def test_pals_are_refused(runs, tmp_path):
    with pytest.raises(MtbertError, match="adapter \"pals\"") as caught:
        export(runs["pals"], tmp_path / "hf")
    assert "mtbert predict" in str(caught.value) and "lora" in str(caught.value)
    assert not (tmp_path / "hf").exists()


def test_a_non_empty_out_is_refused(runs, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(MtbertError, match="already holds files"):
        export(runs["plain"], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(MtbertError, match="not an mtbert run directory"):
        export(tmp_path, tmp_path / "fresh")
    empty = tmp_path / "empty"
    empty.mkdir()  # an existing empty directory is fine
    export(runs["plain"], empty)
    assert (empty / "model.safetensors").is_file()


def test_hf_encoder_exports_its_own_model(registry, tmp_path):
    run = make_run(registry, tmp_path, "roberta", steps=2, encoder=TINY_ROBERTA)
    out = tmp_path / "hf"
    assert export(run, out).model_type == "roberta"
    hf = assert_reproduces(run, out, uses_token_types=False)
    assert type(hf).__name__ == "RobertaModel"


def test_cli(runs, tmp_path):
    out = tmp_path / "hf"
    ok = mtbert("export", runs["lora"], out)
    assert ok.returncode == 0, ok.stderr
    assert "LoRA merged" in ok.stdout and "from_pretrained" in ok.stdout and (out / "config.json").is_file()
    pals = mtbert("export", runs["pals"], tmp_path / "other")
    assert pals.returncode == 2 and "adapter \"pals\"" in pals.stderr and "Traceback" not in pals.stderr
    assert "merges (lora)" in pals.stderr  # the remedy, from what the installed plugins declare
    assert not (tmp_path / "other").exists()
