"""Adapters: PALs, LoRA and the BiLSTM do the math they claim, plug into the model,
are validated in specs, and train through the real loop (tiny encoder, CPU)."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from mtbert.model.build import build_model, make
from mtbert.runs.checkpoint import load_weights, save_checkpoint
from mtbert.base.errors import PluginError, SpecError
from mtbert.model.multitask import MultitaskModel
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_component, structure_spec
from mtbert.training.loop import Trainer
from mtbert_plugins.adapters.lora import LoraLinear, LoraOptions, build_lora
from mtbert_plugins.adapters.pals import default_size

from helpers import TINY_ENCODER, toy_data


TASKS = ["a", "b"]
SHORT, LONG = "a good film", "the plot was rather slow but the actors were very good indeed"


# -- helpers ---------------------------------------------------------------------------------
def encoder_of(registry, **sizes):
    """A fresh tiny encoder (random weights) without dropout, in eval mode."""
    spec = {**TINY_ENCODER, "dropout": 0.0, "attention_dropout": 0.0, **sizes}
    return make(registry, structure_component("encoders", spec, registry)).eval()


def adapter_of(registry, encoder, name, **options):
    """An adapter built for a model whose tasks are "a" and "b"."""
    return make(registry, structure_component("adapters", {"name": name, **options}, registry), encoder, TASKS)


def batch_of(encoder, texts):
    return dict(encoder.tokenizer(texts, padding=True, return_tensors="pt"))


def states(encoder, batch, task=None):
    with torch.no_grad():
        return encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], task=task).states


def head_of(registry, hidden, pooling="mean"):
    component = structure_component("heads", {"name": "classifier", "num_labels": 3, "dropout": 0.0,
                                              "pooling": pooling}, registry)
    return make(registry, component, hidden)


def randomize(module: nn.Module, std: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


# -- PALs ------------------------------------------------------------------------------------
def test_pals_start_as_the_plain_encoder(registry):
    encoder = encoder_of(registry)
    batch = batch_of(encoder, [SHORT, LONG])
    before = {t: states(encoder, batch, t) for t in TASKS}
    pals = adapter_of(registry, encoder, "pals")
    assert all(not p.any() for t in TASKS for p in pals.pals[t].decode.parameters())  # V_D = 0
    assert any(p.abs().sum() > 0 for p in pals.pals["a"].encode.parameters())  # V_E is not
    for task in TASKS:
        assert torch.equal(states(encoder, batch, task), before[task])


@pytest.mark.parametrize("activation", ["gelu", "identity"])
def test_pal_changes_only_its_own_task(registry, activation):
    encoder = encoder_of(registry)
    batch = batch_of(encoder, [SHORT, LONG])
    plain = states(encoder, batch)
    pals = adapter_of(registry, encoder, "pals", tasks=["a"], activation=activation)
    assert list(pals.pals) == ["a"]
    randomize(pals.pals["a"].decode, 0.5)
    assert not torch.allclose(states(encoder, batch, "a"), plain, atol=1e-3)
    assert torch.equal(states(encoder, batch, "b"), plain)
    assert torch.equal(states(encoder, batch, None), plain)


def test_pal_branch_formula_by_hand(registry):
    """One layer's branch is g(V_D Attn(V_E h)), with the attention computed here by hand."""
    encoder = encoder_of(registry)
    batch = batch_of(encoder, [SHORT, LONG])
    pals = adapter_of(registry, encoder, "pals", size=6, heads=3)
    pal = pals.pals["b"]
    randomize(pal, 0.3)
    h = torch.randn(2, batch["input_ids"].shape[1], 32)
    mask = batch["attention_mask"].bool()
    branch = encoder.layer_slots[1][0]
    out = branch(h, None, mask[:, None, None, :], "b")

    attn = pal.attention[1]
    x = pal.encode(h)
    heads = [slice(2 * i, 2 * i + 2) for i in range(3)]
    parts = []
    for s in heads:
        q, k, v = attn.query(x)[..., s], attn.key(x)[..., s], attn.value(x)[..., s]
        scores = q @ k.transpose(1, 2) / 2 ** 0.5
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        parts.append(scores.softmax(-1) @ v)
    expected = torch.nn.functional.gelu(pal.decode(torch.cat(parts, -1)))
    assert torch.allclose(out, expected, atol=1e-5)
    assert branch(h, None, mask[:, None, None, :], "unknown") is None


def test_only_the_batch_task_pal_gets_gradients(registry):
    encoder = encoder_of(registry)
    batch = batch_of(encoder, [SHORT, LONG])
    pals = adapter_of(registry, encoder, "pals")
    for task in TASKS:
        randomize(pals.pals[task].decode, 0.1)
    out = encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], task="a").states
    (out ** 2).sum().backward()
    for name, p in pals.pals["a"].named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in pals.pals["b"].parameters())


def test_pal_default_size_scales_the_paper(registry):
    assert default_size(768, 6) == 204  # the paper's BERT-base PALs
    assert default_size(384, 6) == 102  # MiniLM: 384 * 204 / 768 = 102 = 6 * 17
    assert default_size(32, 6) == 6
    assert default_size(1024, 6) == 270
    assert adapter_of(registry, encoder_of(registry), "pals").size == 6
    minilm_wide = encoder_of(registry, num_layers=1, hidden_size=384, num_heads=12, intermediate_size=64)
    pals = adapter_of(registry, minilm_wide, "pals")
    assert pals.size == 102 and pals.pals["a"].encode.weight.shape == (102, 384)


@pytest.mark.parametrize("size,heads", [(None, 6), (12, 3)])
def test_pal_parameter_count(registry, size, heads):
    encoder = encoder_of(registry)
    own = sum(p.numel() for p in encoder.parameters())
    options = {"heads": heads} if size is None else {"size": size, "heads": heads}
    pals = adapter_of(registry, encoder, "pals", **options)
    d_m, d_s, layers = 32, size or 6, 2
    per_task = 2 * d_m * d_s + d_m + d_s + layers * 3 * (d_s * d_s + d_s)
    assert sum(p.numel() for p in pals.parameters()) == len(TASKS) * per_task
    assert sum(p.numel() for p in encoder.parameters()) == own  # the slots hold no parameters themselves
    assert all(len(slot) == 1 for slot in encoder.layer_slots)


def test_pal_padding_invariance(registry):
    encoder = encoder_of(registry)
    pals = adapter_of(registry, encoder, "pals")
    randomize(pals.pals["a"], 0.5)  # PALs that matter: large, random
    alone = batch_of(encoder, [SHORT])
    padded = batch_of(encoder, [SHORT, LONG])
    n = alone["input_ids"].shape[1]
    assert padded["attention_mask"][0, n:].sum() == 0 and padded["input_ids"].shape[1] > n + 5
    assert not torch.allclose(states(encoder, alone, "a"), states(encoder, alone, "b"), atol=1e-2)
    assert torch.allclose(states(encoder, padded, "a")[0, :n], states(encoder, alone, "a")[0], atol=1e-5)


def test_pals_are_task_specific_and_not_shared(registry):
    encoder = encoder_of(registry)
    pals = adapter_of(registry, encoder, "pals")
    heads = {t: head_of(registry, 32) for t in TASKS}
    model = MultitaskModel(encoder, heads, [pals])
    assert pals.task_specific is True
    pal_ids = {id(p) for p in pals.parameters()}
    shared = model.named_shared_parameters()
    assert pal_ids and not pal_ids & {id(p) for _, p in shared}
    assert {n for n, _ in shared} == {f"encoder.{n}" for n, _ in encoder.named_parameters()}
    # each PAL tensor is in the state dict once, under the adapter
    keys = list(model.state_dict())
    assert len(keys) == len({id(t) for t in model.state_dict().values()})
    assert sum(k.startswith("adapters.0.") for k in keys) == len(list(pals.parameters()))


def test_pals_refuse_an_encoder_without_slots_and_unknown_tasks(registry):
    no_slots = types.SimpleNamespace(hidden_size=32, layer_slots=None)
    with pytest.raises(PluginError, match="layer_slots"):
        adapter_of(registry, no_slots, "pals")
    with pytest.raises(PluginError, match="'c'"):
        adapter_of(registry, encoder_of(registry), "pals", tasks=["a", "c"])
    with pytest.raises(SpecError) as excinfo:
        structure_component("adapters", {"name": "pals", "size": 10, "heads": 3}, registry)
    assert "multiple of heads" in dict(excinfo.value.problems)["adapters.size"]


# -- LoRA ------------------------------------------------------------------------------------
def test_lora_starts_as_the_plain_encoder(registry):
    encoder = encoder_of(registry)
    batch = batch_of(encoder, [SHORT, LONG])
    before = states(encoder, batch)
    lora = adapter_of(registry, encoder, "lora")
    assert all(not f.B.any() and f.A.abs().sum() > 0 for f in lora.factors.values())
    assert torch.equal(states(encoder, batch), before)
    with torch.no_grad():
        for factors in lora.factors.values():
            factors.B.normal_()
    assert not torch.allclose(states(encoder, batch), before, atol=1e-3)


@pytest.mark.parametrize("r,alpha,A,B,expected", [
    # W x + b = [1.5, 1.5]; A x = [6]; B A x = [6, 12]; scale 2 / 1 = 2
    (1, 2.0, [[1.0, 1.0, 1.0]], [[1.0], [2.0]], [13.5, 25.5]),
    # A x = [6, -2]; B A x = [6 - 2, 2 * 6 + 0] = [4, 12]; scale 1 / 2 = 0.5: [1.5 + 2, 1.5 + 6]
    (2, 1.0, [[1.0, 1.0, 1.0], [0.0, -1.0, 0.0]], [[1.0, 1.0], [2.0, 0.0]], [3.5, 7.5]),
])
def test_lora_linear_by_hand(r, alpha, A, B, expected):
    net = nn.ModuleDict({"query": nn.Linear(3, 2), "key": nn.Linear(3, 2)})
    lora = build_lora(LoraOptions(r=r, alpha=alpha), net, TASKS)
    assert isinstance(net["query"], LoraLinear) and isinstance(net["key"], nn.Linear)
    assert lora.scale == alpha / r and lora.wrapped == ["query"]
    with torch.no_grad():
        net["query"].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        net["query"].bias.copy_(torch.tensor([0.5, -0.5]))
        lora.factors["query"].A.copy_(torch.tensor(A))
        lora.factors["query"].B.copy_(torch.tensor(B))
    out = net["query"](torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(out, torch.tensor([expected]))


def test_lora_scale_is_alpha_over_r():
    x = torch.randn(4, 3)
    deltas = {}
    for alpha in (2.0, 6.0):
        torch.manual_seed(1)
        net = nn.ModuleDict({"value": nn.Linear(3, 5)})
        lora = build_lora(LoraOptions(r=4, alpha=alpha), net, TASKS)
        torch.manual_seed(2)
        with torch.no_grad():
            lora.factors["value"].B.normal_()
        base = nn.functional.linear(x, net["value"].weight, net["value"].bias)
        deltas[alpha] = net["value"](x) - base
        f = lora.factors["value"]
        assert torch.allclose(deltas[alpha], alpha / 4 * x @ f.A.T @ f.B.T, atol=1e-6)
    assert torch.allclose(deltas[6.0], 3 * deltas[2.0], atol=1e-6)


def test_lora_wraps_only_the_targets(registry):
    encoder = encoder_of(registry)
    linears = sum(isinstance(m, nn.Linear) for m in encoder.modules())
    assert linears == 2 * 6 + 1  # per layer q, k, v, out, ffn_in, ffn_out; the pooler
    lora = adapter_of(registry, encoder, "lora")
    wrapped = [n for n, m in encoder.named_modules() if isinstance(m, LoraLinear)]
    assert wrapped == ["layers.0.attention.query", "layers.0.attention.value",
                       "layers.1.attention.query", "layers.1.attention.value"]
    assert sorted(lora.wrapped) == sorted(wrapped)
    assert sum(isinstance(m, nn.Linear) for m in encoder.modules()) == linears - 4
    r = 8
    assert sum(p.numel() for p in lora.parameters()) == 4 * (r * 32 + 32 * r)
    other = encoder_of(registry)
    adapter_of(registry, other, "lora", targets=["query"], r=2)
    assert sum(isinstance(m, LoraLinear) for m in other.modules()) == 2


def test_lora_state_dict_saves_and_loads(registry, tmp_path):
    encoder = encoder_of(registry)
    keys = list(encoder.state_dict())
    lora = adapter_of(registry, encoder, "lora")
    assert list(encoder.state_dict()) == keys  # the wrapped linears keep their weight/bias names
    model = MultitaskModel(encoder, {"a": head_of(registry, 32)}, [lora])
    assert len(model.state_dict()) == len({id(t) for t in model.state_dict().values()})
    with torch.no_grad():
        for factors in lora.factors.values():
            factors.B.normal_()
    batch = batch_of(encoder, [SHORT, LONG])
    model.eval()
    expected = model("a", batch)
    save_checkpoint(model, tmp_path / "checkpoint", {"step": 0})

    torch.manual_seed(5)
    encoder2 = encoder_of(registry)
    model2 = MultitaskModel(encoder2, {"a": head_of(registry, 32)}, [adapter_of(registry, encoder2, "lora")])
    model2.eval()
    assert not torch.allclose(model2("a", batch), expected)
    load_weights(model2, tmp_path / "checkpoint")
    assert torch.equal(model2("a", batch), expected)
    model2.load_state_dict(model.state_dict())  # strict: the same keys


def test_lora_wraps_a_hugging_face_model():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertModel(config).eval()
    ids = torch.tensor([[2, 5, 7, 3, 0], [2, 9, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).last_hidden_state
    lora = build_lora(LoraOptions(), model, TASKS)
    assert sorted(lora.wrapped) == [f"encoder.layer.{i}.attention.self.{t}"
                                    for i in (0, 1) for t in ("query", "value")]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).last_hidden_state, before)
        for factors in lora.factors.values():
            factors.B.normal_()
        assert not torch.allclose(model(input_ids=ids, attention_mask=mask).last_hidden_state, before)


def test_lora_error_when_nothing_matches(registry):
    with pytest.raises(PluginError) as excinfo:
        adapter_of(registry, encoder_of(registry), "lora", targets=["q_proj", "v_proj"])
    message = str(excinfo.value)
    assert "'q_proj'" in message and "layers.0.attention.query" in message


# -- BiLSTM ----------------------------------------------------------------------------------
def test_bilstm_keeps_the_width_and_zeroes_padding(registry):
    encoder = encoder_of(registry)
    lstm = adapter_of(registry, encoder, "bilstm").eval()
    assert lstm.lstm.hidden_size == 16 and lstm.lstm.bidirectional
    batch = batch_of(encoder, [SHORT, LONG])
    with torch.no_grad():
        encoded = encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        out = lstm.transform(encoded, "a")
    assert out.states.shape == encoded.states.shape
    pad = batch["attention_mask"] == 0
    assert pad.any() and torch.equal(out.states[pad], torch.zeros_like(out.states[pad]))
    assert (out.states[~pad].abs().sum(-1) > 0).all()
    assert out.pooled is encoded.pooled and out.mask is encoded.mask
    with pytest.raises(PluginError, match="width 32"):
        adapter_of(registry, encoder, "bilstm", hidden=10)


def test_bilstm_padding_invariance(registry):
    encoder = encoder_of(registry)
    lstm = adapter_of(registry, encoder, "bilstm", layers=2).eval()

    def run(texts):
        batch = batch_of(encoder, texts)
        with torch.no_grad():
            return lstm.transform(encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                                  "a").states

    alone, padded = run([SHORT]), run([SHORT, LONG])
    n = alone.shape[1]
    assert padded.shape[1] > n + 5
    assert torch.allclose(padded[0, :n], alone[0], atol=1e-5)


def test_model_applies_the_bilstm_before_the_heads(registry):
    encoder = encoder_of(registry)
    lstm = adapter_of(registry, encoder, "bilstm")
    head = head_of(registry, 32)
    model = MultitaskModel(encoder, {"a": head}, [lstm]).eval()
    assert model.on_top == [lstm]
    batch = batch_of(encoder, [SHORT, LONG])
    with torch.no_grad():
        output = model("a", batch)
        encoded = encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], task="a")
        assert torch.allclose(output, head(lstm.transform(encoded, "a")), atol=1e-6)
        assert not torch.allclose(output, head(encoded), atol=1e-4)


# -- spec validation -------------------------------------------------------------------------
def spec_data(tmp_path, **extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "train.tsv").write_text("id\tsentence\tlabel\na\tgood\t1\nb\tbad\t0\n")
    return {"name": "t", "encoder": dict(TINY_ENCODER), "data": {"dir": str(tmp_path)},
            "tasks": {"sent": {"data": {"train": "train.tsv", "dev": "train.tsv"},
                               "head": {"name": "classifier", "num_labels": 2}, "loss": "cross_entropy",
                               "metrics": ["accuracy"]}},
            **extra}


def test_pals_need_an_encoder_with_layer_slots(registry, tmp_path):
    from mtbert.plugin.hookspecs import hookimpl
    from mtbert.plugin.loading import build_registry

    def build_fake(options, *, restore=None):
        """An encoder factory without layer_slots."""
        raise AssertionError("validation must not build the encoder")

    module = types.ModuleType("fake_encoder_plugin")
    module.register_encoders = hookimpl(lambda register: register("fake", build_fake))
    reg = build_registry(modules=[("fake_encoder_plugin", module, "test")])
    assert not reg.failures
    data = spec_data(tmp_path, adapters=[{"name": "pals"}])
    data["encoder"] = {"name": "fake"}
    with pytest.raises(SpecError) as excinfo:
        structure_spec(data, reg)
    message = dict(excinfo.value.problems)["adapters[0]"]
    assert '"pals"' in message and '"fake"' in message
    data["adapters"] = [{"name": "lora"}, {"name": "bilstm"}]  # these work on any encoder
    assert [a.name for a in structure_spec(data, reg).adapters] == ["lora", "bilstm"]
    data["encoder"] = dict(TINY_ENCODER)
    data["adapters"] = [{"name": "pals"}]
    assert structure_spec(data, reg).adapters[0].name == "pals"


def test_trainable_adapters_needs_adapters(registry, tmp_path):
    data = spec_data(tmp_path, train={"trainable": "adapters"})
    with pytest.raises(SpecError) as excinfo:
        structure_spec(data, registry)
    assert "no adapters" in dict(excinfo.value.problems)["train.trainable"]
    data["adapters"] = [{"name": "lora", "r": 4}]
    assert structure_spec(data, registry).adapters[0].options.r == 4


# -- end to end ------------------------------------------------------------------------------
def adapter_spec(registry, directory, adapters, trainable):
    data = {
        "name": "toy", "seed": 3,
        "encoder": dict(TINY_ENCODER),
        "data": {"dir": str(directory), "max_length": 16},
        "adapters": adapters,
        "train": {"batch_size": 16, "lr": 3e-3, "steps": 2, "trainable": trainable},
        "tasks": {
            "sent": {"data": {"train": "sent.tsv", "dev": "sent.tsv"},
                     "head": {"name": "classifier", "num_labels": 2, "pooling": "mean"},
                     "loss": "cross_entropy", "metrics": ["accuracy"]},
            "count": {"data": {"train": "pairs.tsv", "dev": "pairs.tsv", "text": "s1", "text_pair": "s2",
                               "label": "score"},
                      "head": {"name": "regression", "pooling": "mean"}, "loss": "mse", "metrics": ["pearson"]},
        },
    }
    return structure_spec(data, registry)


def fit(registry, spec, path):
    trainer = Trainer(spec, registry, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(RunDir.create(spec, str(path)))
    assert trainer.step == 2
    after = trainer.model.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # the run's checkpoint (saved, then reloaded for the test predictions) rebuilds the same model
    rebuilt = build_model(spec, registry)
    load_weights(rebuilt, path / "checkpoint")
    assert all(torch.equal(rebuilt.state_dict()[k], after[k].cpu()) for k in after)
    return trainer, changed


def test_pals_train_with_the_encoder_frozen(registry, tmp_path):
    spec = adapter_spec(registry, toy_data(tmp_path / "data", n=64), [{"name": "pals"}], "adapters")
    trainer, changed = fit(registry, spec, tmp_path / "run")
    assert not any(k.startswith("encoder.") for k in changed)
    for task in ("sent", "count"):  # round robin: one step each
        assert f"adapters.0.pals.{task}.decode.weight" in changed
        assert any(k.startswith(f"heads.{task}.") for k in changed)


def test_lora_trains_with_the_encoder_frozen(registry, tmp_path):
    spec = adapter_spec(registry, toy_data(tmp_path / "data", n=64), [{"name": "lora", "r": 4}], "adapters")
    trainer, changed = fit(registry, spec, tmp_path / "run")
    assert not any(k.startswith("encoder.") for k in changed)
    assert {f"adapters.0.factors.layers-{i}-attention-{t}.B" for i in (0, 1) for t in ("query", "value")} <= changed
    assert any(k.startswith("heads.sent.") for k in changed) and any(k.startswith("heads.count.") for k in changed)


def test_bilstm_trains_with_everything(registry, tmp_path):
    spec = adapter_spec(registry, toy_data(tmp_path / "data", n=64), [{"name": "bilstm"}], "all")
    trainer, changed = fit(registry, spec, tmp_path / "run")
    assert trainer.model.on_top and any(k.startswith("adapters.0.lstm.") for k in changed)
    assert any(k.startswith("encoder.layers.") for k in changed)
