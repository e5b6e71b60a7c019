"""SMART (Jiang et al. 2020): the divergences, the ascent, both terms, the switches, and a run."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtbert.model.build import make
from mtbert.base.errors import PluginError, SpecError
from mtbert.model.multitask import MultitaskModel
from mtbert.model.pooling import pool
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_component, structure_spec
from mtbert.training.loop import Trainer
from mtbert_plugins.regularizers.smart import (Smart, adversarial_noise, ascend, binary_symmetric_kl, divergence,
                                               initial_noise, random_rows, squared_error, symmetric_kl)

from helpers import TINY_ENCODER, toy_spec


HEADS = {"multiclass": {"name": "classifier", "num_labels": 3}, "binary": {"name": "binary"},
         "regression": {"name": "regression"}}
TEXTS = ["a good movie", "bad film it was", "the plot was rather dull and long", "wow"]


# -- helpers -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder(registry):
    """The tiny encoder with dropout off (copied per model)."""
    return make(registry, structure_component(
        "encoders", {**TINY_ENCODER, "dropout": 0.0, "attention_dropout": 0.0}, registry))


def build(registry, encoder, heads: dict[str, dict]) -> MultitaskModel:
    enc = copy.deepcopy(encoder, {id(encoder.tokenizer): encoder.tokenizer})
    built = {name: make(registry, structure_component("heads", {**spec, "dropout": 0.0}, registry), enc.hidden_size)
             for name, spec in heads.items()}
    return MultitaskModel(enc, built).train()


def batch_for(tokenizer, kind: str = "multiclass") -> dict:
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch["labels"] = {"multiclass": torch.tensor([0, 1, 2, 1]), "binary": torch.tensor([0.0, 1.0, 1.0, 0.0]),
                       "regression": torch.tensor([0.5, 2.0, 1.0, 3.0])}[kind]
    return batch


def smart(registry, **options) -> Smart:
    return make(registry, structure_component("regularizers", {"name": "smart", **options}, registry))


def count_forwards(model) -> dict:
    """Counts forward calls of the model and of any copy of it (the teacher inherits the hook)."""
    calls = {"student": 0, "teacher": 0}

    def hook(module, _args):
        calls["student" if module is model else "teacher"] += 1

    model.register_forward_pre_hook(hook)
    return calls


# -- 1. R_s: zero without noise, positive with a gradient otherwise ----------------------

@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
def test_rs_is_exactly_zero_without_noise(registry, encoder, kind):
    model = build(registry, encoder, {"t": HEADS[kind]})
    batch = batch_for(model.encoder.tokenizer, kind)
    reg = smart(registry, bregman=False, sigma=0.0, epsilon=0.0)
    penalty = reg.penalty(model, "t", batch, model("t", batch))
    assert penalty.item() == 0.0
    assert reg.stats()["smart/adversarial"].item() == 0.0


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
def test_rs_is_positive_and_trains_the_encoder(registry, encoder, kind):
    model = build(registry, encoder, {"t": HEADS[kind]})
    batch = batch_for(model.encoder.tokenizer, kind)
    reg = smart(registry, bregman=False, sigma=1e-2, epsilon=1e-2, lambda_s=3.0)
    penalty = reg.penalty(model, "t", batch, model("t", batch))
    r_s = reg.stats()["smart/adversarial"]
    assert r_s.item() > 0 and not r_s.requires_grad
    assert torch.allclose(penalty, 3.0 * r_s)  # lambda_s weighs it
    penalty.backward()
    for param in [model.encoder.layers[0].attention.query.weight, model.encoder.embeddings.word.weight,
                  model.heads["t"].linear.weight]:
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_rs_gradient_flows_through_the_clean_output_too(registry, encoder):
    model = build(registry, encoder, {"t": HEADS["multiclass"]})
    batch = batch_for(model.encoder.tokenizer)
    reg = smart(registry, bregman=False, sigma=1e-2, epsilon=1e-2)
    grads = []
    for detach in (False, True):
        model.zero_grad()
        output = model("t", batch)
        torch.manual_seed(5)  # the same noise both times
        reg.penalty(model, "t", batch, output.detach() if detach else output).backward()
        grads.append(model.heads["t"].linear.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


# -- 2. the divergences by hand -----------------------------------------------------------

def test_symmetric_kl_by_hand():
    p, q, r, s = [0.7, 0.3], [0.4, 0.6], [0.5, 0.5], [0.9, 0.1]
    a = torch.tensor([p, r], dtype=torch.float64).log().float().requires_grad_()  # log-probs as logits
    b = torch.tensor([q, s], dtype=torch.float64).log().float().requires_grad_()

    def sym(x, y):
        return sum(xi * math.log(xi / yi) + yi * math.log(yi / xi) for xi, yi in zip(x, y))

    expected = (sym(p, q) + sym(r, s)) / 2  # mean over the batch
    assert abs(sym(p, q) - 0.3 * (math.log(1.75) + math.log(2.0))) < 1e-12
    value = symmetric_kl(a, b)
    assert value.dtype == torch.float32 and value.item() == pytest.approx(expected, rel=1e-6)
    assert symmetric_kl(b, a).item() == pytest.approx(expected, rel=1e-6)
    assert symmetric_kl(a, a).item() == 0.0
    # target probabilities detached, log-probabilities kept: the gradient on each side is
    # that of a soft cross-entropy, (own probabilities - other's) / batch
    value.backward()
    p_all, q_all = torch.tensor([p, r]), torch.tensor([q, s])
    assert torch.allclose(a.grad, (p_all - q_all) / 2, atol=1e-6)
    assert torch.allclose(b.grad, (q_all - p_all) / 2, atol=1e-6)


def test_binary_symmetric_kl_by_hand():
    z_p = torch.tensor([math.log(4.0)], requires_grad=True)  # sigmoid = 0.8
    z_q = torch.tensor([math.log(3.0 / 7.0)], requires_grad=True)  # sigmoid = 0.3
    expected = (0.8 * math.log(0.8 / 0.3) + 0.2 * math.log(0.2 / 0.7)
                + 0.3 * math.log(0.3 / 0.8) + 0.7 * math.log(0.7 / 0.2))
    value = binary_symmetric_kl(z_p, z_q)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert binary_symmetric_kl(z_q, z_p).item() == pytest.approx(expected, rel=1e-6)
    assert binary_symmetric_kl(z_p, z_p).item() == 0.0
    value.backward()  # d/dz of the soft BCE: sigmoid(z) - other's probability
    assert z_p.grad.item() == pytest.approx(0.8 - 0.3, abs=1e-6)
    assert z_q.grad.item() == pytest.approx(0.3 - 0.8, abs=1e-6)
    # large logits stay finite
    assert torch.isfinite(binary_symmetric_kl(torch.tensor([60.0]), torch.tensor([-60.0])))


def test_squared_error_by_hand_and_float32():
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = torch.tensor([1.5, 2.0, 1.0], requires_grad=True)
    value = squared_error(a, b)
    assert value.item() == pytest.approx((0.25 + 0.0 + 4.0) / 3)
    value.backward()
    assert torch.allclose(a.grad, 2 * (a - b).detach() / 3) and torch.allclose(b.grad, -a.grad)
    low = divergence("similarity", a.detach().bfloat16(), b.detach().bfloat16())
    assert low.dtype == torch.float32
    assert symmetric_kl(torch.randn(2, 3).bfloat16(), torch.randn(2, 3).bfloat16()).dtype == torch.float32


def test_divergence_by_output_kind():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert divergence("multiclass", a, b) == symmetric_kl(a, b)
    assert divergence("binary", a[:, 0], b[:, 0]) == binary_symmetric_kl(a[:, 0], b[:, 0])
    assert divergence("regression", a[:, 0], b[:, 0]) == squared_error(a[:, 0], b[:, 0])
    with pytest.raises(PluginError, match="ordinal"):
        divergence("ordinal", a, b)


# -- 3. the ascent ---------------------------------------------------------------------------

def test_ascend_by_hand():
    noise = torch.zeros(1, 2, 3)
    grad = torch.tensor([[[1.0, -2.0, 0.5], [0.1, 0.0, 0.0]]])
    # the inf-norm is per token: token 0 is divided by 2, token 1 by 0.1
    stepped = ascend(noise, grad, step_size=0.1, epsilon=1.0)
    assert torch.allclose(stepped, torch.tensor([[[0.05, -0.1, 0.025], [0.1, 0.0, 0.0]]]))
    clamped = ascend(noise, grad, step_size=0.1, epsilon=0.06)
    assert torch.allclose(clamped, torch.tensor([[[0.05, -0.06, 0.025], [0.06, 0.0, 0.0]]]))
    # a zero gradient leaves the noise where it is (no division by zero)
    start = torch.full((1, 1, 3), 0.01)
    assert torch.equal(ascend(start, torch.zeros(1, 1, 3), 0.1, 1.0), start)
    # pairs: each part on its own
    pair = ascend((noise, noise), (grad, 2 * grad), 0.1, 1.0)
    assert torch.allclose(pair[0], stepped) and torch.allclose(pair[1], stepped)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
def test_one_ascent_step_increases_ls_within_the_ball(registry, encoder, kind):
    model = build(registry, encoder, {"t": HEADS[kind]})
    batch = batch_for(model.encoder.tokenizer, kind)
    output = model("t", batch).detach()
    embeds = model.embed(batch).detach()

    def forward(inputs):
        return model("t", batch, inputs_embeds=inputs)

    def l_s(noise):
        with torch.no_grad():
            return divergence(kind, forward(embeds + noise), output).item()

    epsilon = 1e-2
    start = initial_noise(embeds, 1e-3)
    after = adversarial_noise(forward, embeds, output, kind, start, step_size=1e-3, epsilon=epsilon, steps=1)
    assert not after.requires_grad and after.shape == embeds.shape
    assert after.abs().max() <= epsilon
    assert not torch.equal(after, start)
    assert l_s(after) > l_s(start)
    # many large steps end on the ball's surface, never outside it
    far = adversarial_noise(forward, embeds, output, kind, start, step_size=1.0, epsilon=1e-3, steps=3)
    assert far.abs().max().item() == pytest.approx(1e-3)


# -- 4. D_breg and the teacher -------------------------------------------------------------

def test_bregman_zero_at_first_then_positive_and_ema_by_hand(registry, encoder):
    model = build(registry, encoder, {"t": HEADS["multiclass"]})
    batch = batch_for(model.encoder.tokenizer)
    reg = smart(registry, adversarial=False, beta=0.9, mu=2.0)
    assert reg.teacher is None  # lazily created
    output = model("t", batch)
    penalty = reg.penalty(model, "t", batch, output)
    assert penalty.item() == 0.0 and reg.stats()["smart/bregman"].item() == 0.0
    teacher = reg.teacher
    assert teacher is not None and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.encoder.tokenizer is model.encoder.tokenizer  # shared, not copied

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    (F.cross_entropy(output, batch["labels"]) + penalty).backward()
    assert all(p.grad is None for p in teacher.parameters())
    before = [p.detach().clone() for p in teacher.parameters()]
    optimizer.step()
    # the student moved, the teacher did not (yet)
    assert all(torch.equal(t, b) for t, b in zip(teacher.parameters(), before))
    head_t0 = teacher.heads["t"].linear.weight.detach().clone()
    head_s = model.heads["t"].linear.weight.detach().clone()
    assert not torch.equal(head_t0, head_s)
    reg.after_step(model)
    assert torch.allclose(teacher.heads["t"].linear.weight, 0.9 * head_t0 + 0.1 * head_s, rtol=0, atol=1e-7)
    for t, b, s in zip(teacher.parameters(), before, model.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s.detach(), rtol=0, atol=1e-6)

    output = model("t", batch)
    penalty = reg.penalty(model, "t", batch, output)
    d_breg = reg.stats()["smart/bregman"]
    assert d_breg.item() > 0 and torch.allclose(penalty, 2.0 * d_breg)  # mu weighs it
    with torch.no_grad():
        expected = symmetric_kl(output, teacher("t", batch))
    assert torch.allclose(d_breg, expected)
    model.zero_grad()
    penalty.backward()  # gradient to the student only
    assert model.heads["t"].linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_follows_the_students_mode(registry, encoder):
    model = build(registry, encoder, {"t": HEADS["regression"]})
    batch = batch_for(model.encoder.tokenizer, "regression")
    reg = smart(registry, adversarial=False)
    reg.penalty(model, "t", batch, model("t", batch))
    assert reg.teacher.training
    model.eval()
    reg.penalty(model, "t", batch, model("t", batch))
    assert not reg.teacher.training and not any(m.training for m in reg.teacher.modules())


# -- 5. switches ---------------------------------------------------------------------------

def test_bregman_off_makes_no_teacher(registry, encoder):
    model = build(registry, encoder, {"t": HEADS["multiclass"]})
    batch = batch_for(model.encoder.tokenizer)
    calls = count_forwards(model)
    reg = smart(registry, bregman=False, ascent_steps=2)
    reg.penalty(model, "t", batch, model("t", batch))
    reg.after_step(model)
    assert reg.teacher is None and set(reg.stats()) == {"smart/adversarial"}
    # the clean forward + K = 2 ascent forwards + the final perturbed one; no teacher
    assert calls == {"student": 4, "teacher": 0}


def test_adversarial_off_runs_no_perturbed_forward(registry, encoder):
    model = build(registry, encoder, {"t": HEADS["multiclass"]})
    batch = batch_for(model.encoder.tokenizer)
    calls = count_forwards(model)
    output = model("t", batch)
    reg = smart(registry, adversarial=False)
    reg.penalty(model, "t", batch, output)
    assert calls == {"student": 1, "teacher": 1}  # only the loop's own forward, and the teacher's
    assert set(reg.stats()) == {"smart/bregman"}


def test_both_terms_forward_counts(registry, encoder):
    model = build(registry, encoder, {"t": HEADS["binary"]})
    batch = batch_for(model.encoder.tokenizer, "binary")
    calls = count_forwards(model)
    reg = smart(registry)
    reg.penalty(model, "t", batch, model("t", batch))
    assert calls == {"student": 3, "teacher": 1}  # clean (not recomputed), K = 1 ascent, final
    assert set(reg.stats()) == {"smart/adversarial", "smart/bregman"}


def test_tasks_option_gives_other_tasks_an_exact_zero(registry, encoder):
    model = build(registry, encoder, {"t": HEADS["multiclass"], "x": HEADS["multiclass"]})
    batch = batch_for(model.encoder.tokenizer)
    calls = count_forwards(model)
    reg = smart(registry, tasks=["x"], sigma=1e-2, epsilon=1e-2)
    output = model("t", batch)
    zero = reg.penalty(model, "t", batch, output)
    assert zero.item() == 0.0 and zero.dtype == torch.float32
    assert calls == {"student": 1, "teacher": 0} and reg.teacher is None and reg.stats() == {}
    assert reg.penalty(model, "x", batch, model("x", batch)).item() > 0


def count_rows(model) -> list[int]:
    """The batch size of every forward call of the model, in order."""
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[1]["input_ids"])))
    return sizes


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
def test_fraction_is_the_full_method_on_a_random_subset(registry, encoder, kind):
    model = build(registry, encoder, {"t": HEADS[kind]})
    batch = batch_for(model.encoder.tokenizer, kind)
    output = model("t", batch)
    sizes = count_rows(model)
    options = {"bregman": False, "sigma": 1e-2, "epsilon": 1e-2}

    torch.manual_seed(7)
    half = smart(registry, fraction=0.5, **options)
    half.penalty(model, "t", batch, output)
    assert sizes == [2, 2]  # the ascent and the final forward see ceil(0.5 * 4) rows

    torch.manual_seed(7)  # the same draws by hand: the rows first, then the noise
    rows = torch.randperm(4)[:2]
    chosen = {k: v[rows] for k, v in batch.items()}
    full = smart(registry, **options)
    full.penalty(model, "t", chosen, output[rows])
    r_half, r_full = half.stats()["smart/adversarial"], full.stats()["smart/adversarial"]
    assert r_half.item() > 0 and torch.equal(r_half, r_full)


def test_random_rows_cuts_every_batch_tensor_alike():
    batch = {"input_ids": torch.arange(10).view(5, 2), "labels": torch.arange(5.0),
             "input_ids_b": torch.arange(15).view(5, 3), "scalar": torch.tensor(1.0)}
    output = torch.arange(5.0).mul(10).requires_grad_()
    torch.manual_seed(0)
    chosen, target = random_rows(batch, output, 0.5)
    assert len(target) == 3 and len(set(target.tolist())) == 3  # ceil(2.5) distinct rows
    rows = (target / 10).long()
    assert torch.equal(chosen["input_ids"], batch["input_ids"][rows])
    assert torch.equal(chosen["input_ids_b"], batch["input_ids_b"][rows])
    assert torch.equal(chosen["labels"], rows.float()) and chosen["scalar"] is batch["scalar"]
    target.sum().backward()  # the clean output keeps its graph for the chosen rows
    assert output.grad.tolist() == [1.0 if i in rows.tolist() else 0.0 for i in range(5)]
    assert len(random_rows(batch, output, 0.01)[1]) == 1  # never empty


def test_fraction_one_is_the_papers_algorithm_step_by_step(registry, encoder):
    """The default draws no rows: R_s is exactly noise -> one ascent step -> divergence on the whole batch."""
    model = build(registry, encoder, {"t": HEADS["multiclass"]})
    batch = batch_for(model.encoder.tokenizer)
    output = model("t", batch)
    torch.manual_seed(3)
    reg = smart(registry, bregman=False, sigma=1e-2, epsilon=1e-2, fraction=1.0)
    reg.penalty(model, "t", batch, output)

    torch.manual_seed(3)
    embeds = model.embed(batch)

    def forward(inputs):
        return model("t", batch, inputs_embeds=inputs)
    noise = adversarial_noise(forward, embeds, output, "multiclass", initial_noise(embeds, 1e-2), 1e-3, 1e-2, 1)
    by_hand = divergence("multiclass", forward(embeds + noise), output)
    assert by_hand.item() > 0 and torch.equal(reg.stats()["smart/adversarial"], by_hand.detach())


def test_unknown_task_in_tasks_is_a_spec_error(registry, tmp_path):
    from mtbert.config.spec import structure_spec, unstructure

    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data"), steps=1))
    data["regularizers"] = [{"name": "smart", "tasks": ["sent", "snet"]}]
    with pytest.raises(SpecError) as excinfo:
        structure_spec(data, registry)
    assert dict(excinfo.value.problems)["regularizers[0].tasks"].startswith(
        "unknown task 'snet' (did you mean \"sent\"?)")


@pytest.mark.parametrize("options, where", [
    ({"adversarial": False, "bregman": False}, "both SMART terms are off"),
    ({"sigma": -1.0}, "sigma"),
    ({"beta": 1.5}, "beta"),
    ({"ascent_steps": -1}, "ascent_steps"),
    ({"tasks": []}, "tasks"),
    ({"lambda": 1.0}, "unknown key"),
    ({"fraction": 0.0}, "fraction must be above 0"),
    ({"fraction": 1.5}, "fraction"),
])
def test_bad_options_are_spec_errors(registry, options, where):
    with pytest.raises(SpecError, match=where):
        structure_component("regularizers", {"name": "smart", **options}, registry)


def test_defaults_are_the_papers(registry):
    options = structure_component("regularizers", "smart", registry).options
    assert (options.sigma, options.epsilon, options.step_size, options.ascent_steps, options.beta,
            options.mu, options.lambda_s) == (1e-5, 1e-5, 1e-3, 1, 0.99, 1.0, 1.0)
    assert options.adversarial and options.bregman and options.tasks is None


# -- bi-encoded pairs ---------------------------------------------------------------------------

class Cosine(nn.Module):
    """A minimal bi-encoder head: cosine of the two mean-pooled sentences."""

    output_kind = "similarity"
    pair_encoding = "bi"

    def forward(self, encoded):
        first, second = encoded
        return F.cosine_similarity(pool(first, "mean"), pool(second, "mean"), dim=-1)


def pair_batch(tokenizer) -> dict:
    first = tokenizer(TEXTS, padding=True, return_tensors="pt")
    second = tokenizer(list(reversed(TEXTS)), padding=True, return_tensors="pt")
    batch = dict(first)
    batch.update({k + "_b": v for k, v in second.items()})
    batch["labels"] = torch.tensor([0.1, 0.5, 0.9, 0.0])
    return batch


def test_bi_encoded_pairs_perturb_both_parts(registry, encoder):
    model = MultitaskModel(copy.deepcopy(encoder, {id(encoder.tokenizer): encoder.tokenizer}), {"t": Cosine()})
    model.train()
    batch = pair_batch(model.encoder.tokenizer)
    output = model("t", batch)
    assert smart(registry, sigma=0.0, epsilon=0.0).penalty(model, "t", batch, output).item() == 0.0

    embeds = tuple(e.detach() for e in model.embed(batch))
    start = initial_noise(embeds, 1e-2)
    assert isinstance(start, tuple) and start[0].shape == start[1].shape  # same lengths here
    assert not torch.equal(start[0], start[1])  # independent noise
    noise = adversarial_noise(lambda inputs: model("t", batch, inputs_embeds=inputs), embeds, output,
                              "similarity", start, 1e-3, 1e-2, 1)
    assert all(n.abs().max() <= 1e-2 and not torch.equal(n, s) for n, s in zip(noise, start))

    reg = smart(registry, sigma=1e-2, epsilon=1e-2)
    penalty = reg.penalty(model, "t", batch, output)
    assert reg.stats()["smart/adversarial"].item() > 0 and reg.stats()["smart/bregman"].item() == 0.0
    penalty.backward()
    assert model.encoder.layers[0].ffn_in.weight.grad.abs().sum() > 0


# -- 6. end to end through the real loop ----------------------------------------------------------

def toy_data(directory, n=64):
    rng = random.Random(0)
    filler = "the a movie film plot actor scene story it was is and of very".split()
    directory.mkdir(parents=True, exist_ok=True)
    rows, pairs = ["id\tsentence\tlabel"], ["id\ts1\ts2\tscore"]
    for i in range(n):
        words = rng.sample(filler, 4) + ["good" if i % 2 else "bad"]
        rows.append(f"r{i}\t{' '.join(words)}\t{i % 2}")
        k = rng.randint(0, 3)
        pairs.append(f"p{i}\t{' '.join(rng.sample(filler, 3) + ['wow'] * k)}\t{rng.choice(filler)}\t{k}")
    (directory / "sent.tsv").write_text("\n".join(rows) + "\n")
    (directory / "pairs.tsv").write_text("\n".join(pairs) + "\n")
    return directory


def test_trains_through_the_loop_and_logs_both_terms(registry, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    directory = toy_data(tmp_path / "data")
    data = {
        "name": "smart-toy", "seed": 3, "encoder": dict(TINY_ENCODER),
        "data": {"dir": str(directory), "max_length": 16},
        "train": {"steps": 3, "batch_size": 16, "lr": 3e-3, "log_every": 1, "device": "cpu"},
        "regularizers": [{"name": "smart"}],
        "tasks": {
            "sent": {"data": {"train": "sent.tsv", "dev": "sent.tsv"},
                     "head": {"name": "classifier", "num_labels": 2}, "loss": "cross_entropy",
                     "metrics": ["accuracy"]},
            "bin": {"data": {"train": "sent.tsv"}, "head": "binary", "loss": "bce", "metrics": ["accuracy"]},
            "count": {"data": {"train": "pairs.tsv", "dev": "pairs.tsv", "text": "s1", "text_pair": "s2",
                               "label": "score"},
                      "head": "regression", "loss": "mse", "metrics": ["pearson"]},
        },
    }
    spec = structure_spec(data, registry)
    trainer = Trainer(spec, registry, progress=False)
    (reg,) = trainer.regularizers.values()
    assert isinstance(reg, Smart) and list(trainer.regularizers) == ["smart"]
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    assert trainer.step == 3

    # the teacher trailed the student by EMA: between the start and the trained weights
    assert reg.teacher is not None
    student = dict(trainer.model.named_parameters())
    moved = [n for n, p in reg.teacher.named_parameters() if not torch.equal(p, student[n])]
    assert moved

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("regularizer/smart/adversarial", "regularizer/smart/bregman"):
        assert tag in tags, tag
        values = [e.value for e in events.Scalars(tag)]
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3]
        assert all(math.isfinite(v) and v >= 0 for v in values)
    # with dropout on and the teacher a step behind, D_breg is positive after the first update
    assert events.Scalars("regularizer/smart/bregman")[-1].value > 0
