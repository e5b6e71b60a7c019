"""minBERT is BERT: parity with transformers.BertModel on the real MiniLM checkpoint, and loading."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mtbert.toolkit import pretrained
from mtbert.model.build import make
from mtbert.toolkit.bert import hf_to_ours, ours_to_hf
from mtbert.base.errors import CheckpointError
from mtbert.config.spec import structure_component

SENTENCES = [("A short one.", "Its pair, a little longer than it."),
             ("A much longer sentence with several more words, and punctuation!", "Short.")]


def minbert(registry, **options):
    return make(registry, structure_component("encoders", {"name": "minbert", **options}, registry))


@pytest.fixture(scope="module")
def reference():
    from transformers import BertModel

    return BertModel.from_pretrained(str(pretrained.embedded_path())).eval()


@pytest.mark.real
def test_hidden_states_equal_transformers_bert(registry, reference):
    ours = minbert(registry).eval()
    batch = ours.tokenizer([a for a, _ in SENTENCES], [b for _, b in SENTENCES], padding=True,
                           return_tensors="pt")
    assert batch["attention_mask"].min() == 0  # the batch really has padding
    with torch.no_grad():
        theirs = reference(**batch, output_hidden_states=True)
        mask = batch["attention_mask"].bool()
        h = ours.embed(batch["input_ids"], batch["token_type_ids"])
        assert (h - theirs.hidden_states[0])[mask].abs().max() < 1e-5
        bias = batch["attention_mask"][:, None, None, :].bool()
        for layer, expected in zip(ours.layers, theirs.hidden_states[1:]):
            h = layer(h, bias)
            assert (h - expected)[mask].abs().max() < 1e-5
        out = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert (out.states - theirs.last_hidden_state)[mask].abs().max() < 1e-5
    assert (out.pooled - theirs.pooler_output).abs().max() < 1e-5


@pytest.mark.real
def test_tokenizer_is_the_checkpoints_own(registry):
    from transformers import AutoTokenizer

    ours = minbert(registry).tokenizer
    theirs = AutoTokenizer.from_pretrained(str(pretrained.embedded_path()))
    assert ours.is_fast
    text = "Some text , with Ünïcode and unknownwordpieces."
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]


def copy_checkpoint(tmp_path, rename=None, extra=None, reshape=None):
    """A copy of the MiniLM checkpoint with its tensors renamed / added / reshaped."""
    source = pretrained.embedded_path()
    target = tmp_path / "ckpt"
    target.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    tensors = load_file(str(source / "model.safetensors"))
    if reshape:
        tensors[reshape] = torch.zeros(3, 3)
    tensors = {(rename(k) if rename else k): v for k, v in tensors.items()}
    tensors.update(extra or {})
    save_file(tensors, str(target / "model.safetensors"))
    return target


@pytest.mark.real
def test_loads_with_bert_prefix_and_ignores_other_heads(registry, tmp_path):
    directory = copy_checkpoint(tmp_path, rename=lambda k: "bert." + k,
                                extra={"cls.predictions.bias": torch.zeros(30522)})
    plain, prefixed = minbert(registry), minbert(registry, pretrained=str(directory))
    for (name, a), (_, b) in zip(plain.state_dict().items(), prefixed.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.real
def test_shape_mismatch_names_tensor_and_shapes(registry, tmp_path):
    directory = copy_checkpoint(tmp_path, reshape="encoder.layer.2.attention.self.key.weight")
    with pytest.raises(CheckpointError) as excinfo:
        minbert(registry, pretrained=str(directory))
    message = str(excinfo.value)
    assert "encoder.layer.2.attention.self.key.weight" in message
    assert "(3, 3)" in message and "(384, 384)" in message


def test_missing_directory_and_offline_hub_are_clear(registry, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        minbert(registry, pretrained=str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="huggingface-cli download"):
        minbert(registry, pretrained="someone/no-such-model-here")


def test_pytorch_bin_only_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="reads only safetensors"):
        pretrained.read_safetensors(tmp_path)


def test_name_mapping_both_ways():
    assert hf_to_ours("bert.encoder.layer.3.attention.self.query.weight") == "layers.3.attention.query.weight"
    assert hf_to_ours("encoder.layer.0.attention.output.LayerNorm.gamma") == "layers.0.attention.norm.weight"
    assert hf_to_ours("encoder.layer.0.output.LayerNorm.beta") == "layers.0.norm.bias"
    assert hf_to_ours("embeddings.word_embeddings.weight") == "embeddings.word.weight"
    assert hf_to_ours("cls.predictions.transform.dense.weight") is None


def test_every_parameter_maps_back_to_hugging_face(tiny_encoder):
    for name in tiny_encoder.state_dict():
        assert hf_to_ours(ours_to_hf(name)) == name
