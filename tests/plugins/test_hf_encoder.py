"""The hf encoder: any transformers AutoModel, here a tiny random RoBERTa built from a config."""

from __future__ import annotations

import pytest
import torch

from mtbert.model.build import make
from mtbert.base.errors import SpecError
from mtbert.commands.inference import Predictor
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_component, structure_spec, unstructure
from mtbert.training.loop import Trainer

from helpers import toy_data, toy_spec, TINY_ROBERTA



def roberta_spec(registry, tmp_path, **changes):
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data"), steps=4, eval_every=4))
    data["encoder"] = TINY_ROBERTA
    data.update(changes)
    if "phases" in changes:  # phases carry their own lengths
        data["train"].pop("steps")
    return structure_spec(data, registry)


def test_builds_a_roberta_and_encodes(registry):
    encoder = make(registry, structure_component("encoders", TINY_ROBERTA, registry)).eval()
    assert type(encoder.model).__name__ == "RobertaModel" and encoder.hidden_size == 32
    batch = encoder.tokenizer(["a pair", "b"], ["of texts", "c d e"], padding=True, return_tensors="pt")
    out = encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert out.states.shape == (2, batch["input_ids"].shape[1], 32) and out.pooled.shape == (2, 32)
    # inputs_embeds (what SMART perturbs) reproduce the plain forward pass
    again = encoder(batch["input_ids"], batch["attention_mask"], inputs_embeds=encoder.embed(batch["input_ids"]))
    mask = batch["attention_mask"].bool()
    assert torch.allclose(out.states[mask], again.states[mask], atol=1e-6)
    assert len(encoder.layers) == 2


def test_options_are_checked(registry):
    with pytest.raises(SpecError, match="not both"):
        structure_component("encoders", {"name": "hf"}, registry)
    with pytest.raises(SpecError, match="needs a tokenizer"):
        structure_component("encoders", {"name": "hf", "config": {"model_type": "roberta"}}, registry)


def test_trains_heads_and_reloads_for_prediction(registry, tmp_path):
    spec = roberta_spec(registry, tmp_path)
    trainer = Trainer(spec, registry, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder.model."))
    predictor = Predictor.load(tmp_path / "run", registry=registry)
    out = tmp_path / "pred.csv"
    predictor.predict_file("sent", tmp_path / "data" / "sent.tsv", out)
    assert out.read_text() == (tmp_path / "run" / "predictions" / "sent-dev-output.csv").read_text()


def test_last_layers_finds_the_roberta_layers(registry, tmp_path):
    spec = roberta_spec(registry, tmp_path, phases=[{"trainable": "last_layers", "steps": 2}])
    trainer = Trainer(spec, registry, progress=False)
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    frozen = [n for n, p in trainer.model.named_parameters() if not p.requires_grad]
    assert any(".layer.0." in n for n in frozen) and not any(".layer.1." in n for n in frozen)


@pytest.mark.parametrize("model_type, config, has", [
    ("roberta", {}, True), ("bert", {}, True),
    ("electra", {"embedding_size": 32}, False),
    ("distilbert", {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}, False),
    ("deberta-v2", {}, False),
    ("gte", {}, False),  # takes add_pooling_layer, but AutoModel builds it without one
])
def test_pooling_pooler_on_an_encoder_without_a_pooler_is_refused_at_validation(registry, tmp_path, model_type,
                                                                                config, has):
    """Before, it passed validate, made the run directory and failed at the first step."""
    from mtbert.base.errors import SpecError

    encoder = {**TINY_ROBERTA, "config": {**TINY_ROBERTA["config"], "model_type": model_type, **config}}
    data = unstructure(toy_spec(registry, toy_data(tmp_path)))
    data["encoder"] = encoder
    data["tasks"]["sent"]["head"]["pooling"] = "pooler"
    if has:
        assert structure_spec(data, registry).tasks["sent"].head.options.pooling == "pooler"
        return
    with pytest.raises(SpecError) as caught:
        structure_spec(data, registry)
    message = dict(caught.value.problems)["tasks.sent.head.pooling"]
    assert f"model_type {model_type}" in message and 'use pooling = "cls" or "mean"' in message


TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 30522, "max_position_embeddings": 64, "pad_token_id": 0}
FAMILIES = {  # model type -> config fields beyond TINY, the projections LoRA must find by default
    "bert": ({}, {"query", "value"}),
    "deberta-v2": ({}, {"query_proj", "value_proj"}),
    "distilbert": ({"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}, {"q_lin", "v_lin"}),
    "electra": ({"embedding_size": 32}, {"query", "value"}),
    "modernbert": ({"global_attn_every_n_layers": 1, "local_attention": 16}, {"Wqkv"}),
    "mpnet": ({}, {"q", "v"}),
    "eurobert": ({}, {"q_proj", "v_proj"}),
    "jina_embeddings_v3": ({}, {"q_proj", "v_proj"}),
    "ultrabert": ({}, {"q_proj", "v_proj"}),
}


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_lora_defaults_to_each_familys_query_and_value_projections(registry, model_type):
    from mtbert.config.spec import structure_component

    extra, expected = FAMILIES[model_type]
    encoder_spec = {"name": "hf", "tokenizer": "minilm-l6", "config": {"model_type": model_type, **TINY, **extra}}
    encoder = make(registry, structure_component("encoders", encoder_spec, registry))
    lora = make(registry, structure_component("adapters", {"name": "lora", "r": 2}, registry), encoder, ["a"])
    layers = {name.rsplit(".", 1)[-1] for name in lora.wrapped}
    assert layers == expected and len(lora.wrapped) == 2 * len(expected)  # every layer's, two layers


def test_lora_on_a_model_type_without_known_projections_is_refused_at_validation(registry, tmp_path):
    data = unstructure(toy_spec(registry, toy_data(tmp_path)))
    data["encoder"] = {**TINY_ROBERTA, "config": {**TINY_ROBERTA["config"], "model_type": "xlnet", "d_model": 32,
                                                  "n_layer": 2, "n_head": 2, "d_inner": 64}}
    data["adapters"] = [{"name": "lora"}]
    with pytest.raises(SpecError) as caught:
        structure_spec(data, registry)
    assert "model_type xlnet" in dict(caught.value.problems)["adapters[0].targets"]
    data["adapters"] = [{"name": "lora", "targets": ["q", "v"]}]  # named: no check of the defaults
    assert structure_spec(data, registry).adapters[0].options.targets == ["q", "v"]


ALBERT = {"model_type": "albert", **TINY, "embedding_size": 16}


def test_last_layers_on_albert_is_refused_at_validation_and_its_layers_give_gradient_blocks(registry, tmp_path):
    """ALBERT shares one group of layers across depths: no 'last layers' to train (refused before a run
    directory exists), while per-layer gradient surgery gets its shared layer as a block of its own."""
    from mtbert.toolkit.pertask import block_keys

    data = unstructure(toy_spec(registry, toy_data(tmp_path)))
    data["encoder"] = {"name": "hf", "tokenizer": "minilm-l6", "config": ALBERT}
    data["train"].update(trainable="last_layers")
    with pytest.raises(SpecError) as caught:
        structure_spec(data, registry)
    assert "model_type albert" in dict(caught.value.problems)["train.trainable"]
    data["train"].update(trainable="all")
    encoder = make(registry, structure_spec(data, registry).encoder)
    keys = set(block_keys([n for n, _ in encoder.model.named_parameters()], "layer"))
    assert "layer 0" in keys and "embeddings" in keys and len(keys) >= 3
    data["encoder"]["config"] = {**ALBERT, "model_type": "bert"}
    data["train"].update(trainable="last_layers")
    assert structure_spec(data, registry).train.trainable == "last_layers"


def test_deberta_v1_in_bf16_is_refused_at_validation_and_auto_trains_in_fp32(registry, tmp_path, caplog):
    import logging

    data = unstructure(toy_spec(registry, toy_data(tmp_path), steps=1))
    data["encoder"] = {"name": "hf", "tokenizer": "minilm-l6", "config": {"model_type": "deberta", **TINY}}
    data["train"].update(precision="bf16")
    with pytest.raises(SpecError) as caught:
        structure_spec(data, registry)
    assert "model_type deberta" in dict(caught.value.problems)["train.precision"]
    data["train"].update(precision="auto")
    spec = structure_spec(data, registry)
    import mtbert.training.loop as loop

    real = loop.choose_device
    loop.choose_device = lambda setting: torch.device("cuda")  # as if on a GPU: auto would pick bf16
    try:
        with caplog.at_level(logging.WARNING, logger="mtbert"), pytest.raises(Exception):
            Trainer(spec, registry, progress=False)  # stops at moving to the absent GPU, after the choice
    finally:
        loop.choose_device = real
    assert "does not run in bf16: training in fp32" in caplog.text


def test_what_transformers_refuses_is_one_screen(registry, tmp_path):
    """funnel refuses num_hidden_layers when its config is built; nystromformer fails on dynamically
    padded batches: each a CheckpointError naming the model type, not a traceback."""
    from mtbert.base.errors import CheckpointError

    funnel = {"name": "hf", "tokenizer": "minilm-l6",
              "config": {"model_type": "funnel", **TINY, "block_sizes": [1, 1], "d_model": 32, "n_head": 2,
                         "d_head": 16, "d_inner": 64}}
    with pytest.raises(CheckpointError, match="NotImplementedError: .*block_sizes"):
        make(registry, structure_component("encoders", funnel, registry))
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=32), steps=2, eval_every=2))
    data["encoder"] = {"name": "hf", "tokenizer": "minilm-l6",
                       "config": {"model_type": "nystromformer", **TINY, "num_landmarks": 4,
                                  "segment_means_seq_len": 16, "conv_kernel_size": 3}}
    spec = structure_spec(data, registry)
    with pytest.raises(CheckpointError, match="the nystromformer model failed inside transformers"):
        Trainer(spec, registry, progress=False).fit(RunDir.create(spec, tmp_path / "run"))
