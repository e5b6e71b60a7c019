"""minbert's ``unpad``: the layers on a batch's real tokens only compute what the padded layers do.

The padded forward is the reference (tests/plugins/test_encoder_parity.py holds it to
transformers' BertModel); every case here runs the same weights both ways on right-padded
batches of very different lengths: the states of real tokens, the pooler, every parameter's
gradient, with an adapter's branch in every layer and with SMART's input embeddings, through a
whole training run, and under export (which keeps the padded graph). The branch a GPU takes
(FlashAttention over packed sequences) runs here with the kernel replaced by its contract; the
kernel itself is checked in tests/training/test_cuda.py.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mtbert.config.spec import structure_component, structure_spec, unstructure
from mtbert.model.build import make
from mtbert.runs.rundir import RunDir
from mtbert.toolkit.bert import Unpadded, flash_packs
from mtbert.training.loop import Trainer

from helpers import TINY_ENCODER, toy_data, toy_spec, read_metrics

FIRST = ["a good movie", "the plot of the film was bad and far too long for anyone", "it", "so so"]
SECOND = ["x y", "z", "the a b c d e f g h", "fine"]


def encoder(registry, **options):
    torch.manual_seed(0)
    return make(registry, structure_component(
        "encoders", {**TINY_ENCODER, "dropout": 0.0, "attention_dropout": 0.0, **options}, registry))


def batch(model, pairs=True):
    encoded = model.tokenizer(FIRST, SECOND if pairs else None, padding=True, return_tensors="pt",
                              return_token_type_ids=True)
    return encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"]


def both_ways(model, ids, mask, types, also=None, **forward):
    """(states, pooled, gradients) with unpad off, then on, from the same weights (gradients of the
    encoder's parameters and of ``also``'s, a module outside it)."""
    results = []
    owners = [model] if also is None else [model, also]
    for unpad in (False, True):
        model.unpad = unpad
        for owner in owners:
            owner.zero_grad()
        out = model(ids, mask, types, **forward)
        # a loss that reads every real token's state and the pooler, with unequal weights
        weights = torch.linspace(0.5, 1.5, out.states.shape[-1])
        loss = ((out.states * mask[..., None]) * weights).pow(2).sum() + out.pooled.sum()
        loss.backward()
        grads = {f"{i}.{n}": p.grad.clone() for i, owner in enumerate(owners)
                 for n, p in owner.named_parameters() if p.grad is not None}
        results.append((out.states.detach(), out.pooled.detach(), grads))
    model.unpad = False
    return results


def assert_same(padded, unpadded, mask):
    (states, pooled, grads), (states_u, pooled_u, grads_u) = padded, unpadded
    real = mask.bool()
    assert torch.allclose(states_u[real], states[real], atol=1e-6, rtol=1e-5)
    assert torch.count_nonzero(states_u[~real]) == 0  # the padding's states are zeros
    assert torch.allclose(pooled_u, pooled, atol=1e-6, rtol=1e-5)
    assert grads.keys() == grads_u.keys()
    for name in grads:
        # (the key biases' true gradient is 0: softmax ignores a score added to every key; both sides
        # hold ~1e-8 of rounding there, so the tolerance is absolute as well as relative)
        assert torch.allclose(grads_u[name], grads[name], atol=1e-6, rtol=1e-4), name


def test_unpadded_indices_and_row_starts():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    where = Unpadded.of(mask)
    assert where.index.tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    assert where.starts.tolist() == [0, 3, 4, 8] and where.starts.dtype == torch.int32
    x = torch.arange(12.0).view(3, 4, 1)
    assert where.gather(x).flatten().tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    assert torch.equal(where.scatter(where.gather(x)), x * mask[..., None])


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pairs"])
def test_unpadded_forward_and_backward_equal_the_padded(registry, pairs):
    model = encoder(registry)
    ids, mask, types = batch(model, pairs)
    assert (mask == 0).float().mean() > 0.3  # a batch with much padding: the case that matters
    assert_same(*both_ways(model, ids, mask, types), mask)


def test_a_batch_without_padding_and_a_batch_of_one(registry):
    model = encoder(registry)
    ids, mask, types = batch(model)
    full = mask.sum(1) == mask.shape[1]
    assert full.any()
    rows = full.nonzero()[0]
    assert_same(*both_ways(model, ids[rows], mask[rows], types[rows]), mask[rows])
    assert_same(*both_ways(model, ids[:1], mask[:1], types[:1]), mask[:1])


def test_no_token_types_and_smart_input_embeddings(registry):
    """Without token types, and from ``embed()``'s output perturbed, as SMART calls the encoder."""
    model = encoder(registry)
    ids, mask, types = batch(model)
    assert_same(*both_ways(model, ids, mask, None), mask)
    noise = 1e-3 * torch.randn(*ids.shape, model.hidden_size, generator=torch.Generator().manual_seed(1))
    embeds = model.embed(ids, types).detach() + noise
    assert_same(*both_ways(model, ids, mask, types, inputs_embeds=embeds), mask)


def test_a_pals_branch_in_every_layer_sees_the_padded_batch(registry):
    """PALs' own attention runs on the padded batch beside the unpadded layers; its output is the same."""
    from mtbert_plugins.adapters.pals import PalsOptions, build_pals

    model = encoder(registry)
    pals = build_pals(PalsOptions(size=8, heads=2, dropout=0.0), model, ["sent"])
    for pal in pals.pals.values():  # give the (zero-initialised) decoder weights, so the branch matters
        torch.nn.init.normal_(pal.decode.weight, std=0.5)
    ids, mask, types = batch(model)
    padded, unpadded = both_ways(model, ids, mask, types, also=pals, task="sent")
    assert any(name.startswith("1.pals.sent.attention.0.") for name in padded[2])  # the branch got gradients
    assert_same(padded, unpadded, mask)
    without = both_ways(model, ids, mask, types)[0]  # and it did change the states
    assert not torch.allclose(without[0], padded[0])


def test_bf16_autocast_agrees_within_its_precision(registry):
    model = encoder(registry).eval()
    ids, mask, types = batch(model)
    states = []
    for unpad in (False, True):
        model.unpad = unpad
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            states.append(model(ids, mask, types).states.float())
    real = mask.bool()
    difference = (states[1][real] - states[0][real]).norm() / states[0][real].norm()
    assert difference < 2e-2  # bf16 keeps 8 bits: ~4e-3 relative per rounding
    assert not flash_packs(torch.zeros(3, 2, 16, dtype=torch.bfloat16))  # the CPU takes the padded attention


def varlen_reference(q, k, v, starts_q, starts_k, max_q, max_k):
    """torch.nn.attention.varlen.varlen_attn's contract on the CPU: each sequence, the rows
    starts[i]:starts[i + 1] of the packed [tokens, heads, size] tensors, attends within itself."""
    assert q.shape == k.shape == v.shape and q.dim() == 3 and starts_q.dtype == torch.int32
    assert torch.equal(starts_q, starts_k) and int(starts_q[-1]) == q.shape[0]
    assert max_q == max_k and max_q >= int((starts_q[1:] - starts_q[:-1]).max())
    out = torch.empty_like(q)
    for begin, end in zip(starts_q[:-1].tolist(), starts_q[1:].tolist()):
        piece = [x[begin:end].transpose(0, 1) for x in (q, k, v)]  # [heads, length, size]
        out[begin:end] = torch.nn.functional.scaled_dot_product_attention(*piece).transpose(0, 1)
    return out


def test_the_packed_attention_path_keeps_the_kernels_contract(registry, monkeypatch):
    """The branch a GPU takes (FlashAttention over packed sequences), with the kernel replaced by
    its contract written out on the CPU: what mtbert hands it (packed tokens, row starts, lengths)
    gives the padded encoder's states and gradients."""
    from mtbert.toolkit import bert

    calls = []
    monkeypatch.setattr(bert, "flash_packs", lambda q: True)
    monkeypatch.setattr(bert, "varlen_attn", lambda *a: calls.append(1) or varlen_reference(*a))
    model = encoder(registry)
    ids, mask, types = batch(model)
    assert_same(*both_ways(model, ids, mask, types), mask)
    assert len(calls) == len(model.layers)  # each layer's attention went through the packed kernel


def test_a_training_run_unpadded_ends_where_the_padded_one_does(registry, tmp_path):
    """Two epochs of the toy tasks (dropout off, so both runs draw the same), padded and unpadded:
    the same losses, dev scores and final weights within float tolerance."""
    data = toy_data(tmp_path / "data")
    finals = []
    for unpad in (False, True):
        spec = unstructure(toy_spec(registry, data, epochs=2))
        spec["encoder"].update(dropout=0.0, attention_dropout=0.0, unpad=unpad)
        run = tmp_path / f"unpad-{unpad}"
        Trainer(structure_spec(spec, registry), registry, progress=False).fit(RunDir.create(
            structure_spec(spec, registry), str(run)))
        finals.append((read_metrics(run), load_file(str(run / "checkpoint" / "model.safetensors"))))
    (metrics, weights), (metrics_u, weights_u) = finals
    assert [m["step"] for m in metrics] == [m["step"] for m in metrics_u]
    for row, row_u in zip(metrics, metrics_u):
        assert row_u["overall"] == pytest.approx(row["overall"], abs=1e-4)
    assert weights.keys() == weights_u.keys()
    moved = max(float((weights_u[k] - weights[k]).abs().max()) for k in weights)
    assert moved < 1e-4, moved


def test_export_traces_the_padded_graph(registry):
    """torch.export (what the ONNX export runs) sees the padded forward: a graph whose shapes do not
    depend on the data, with the unpadded encoder's outputs."""
    from torch.export import Dim, export

    model = encoder(registry, unpad=True).eval()
    ids, mask, types = batch(model)

    class States(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids, mask, types):
            return self.model(ids, mask, types).states

    dims = {0: Dim("batch"), 1: Dim("length", max=64)}
    with torch.no_grad():
        program = export(States(), (ids, mask, types), dynamic_shapes=({**dims}, {**dims}, {**dims}))
        traced, eager = program.module()(ids, mask, types), model(ids, mask, types).states
    assert "nonzero" not in str(program.graph)
    real = mask.bool()
    assert torch.allclose(traced[real], eager[real], atol=1e-5)


def test_the_one_wait_per_encoder_call(registry, tmp_path):
    """The price docs/architecture.md states: finding the real tokens reads the mask's count back,
    once per encoder call (here one step of each toy task), and nothing else does."""
    from mtbert.testing.readback import read_backs_in_steps

    spec = unstructure(toy_spec(registry, toy_data(tmp_path / "data")))
    spec["encoder"]["unpad"] = True
    trainer = Trainer(structure_spec(spec, registry), registry, progress=False)
    assert read_backs_in_steps(trainer) == ["nonzero", "nonzero"]
