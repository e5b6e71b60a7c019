"""Gradient surgery (PCGrad, GradVac) on hand-computed cases, through setup/backward/finish.

A parameter w with per-task loss_t = g_t . w has gradient exactly g_t, so a
test chooses the task gradients and checks the update left in w.grad.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from mtbert.model.build import make
from mtbert.base.errors import SpecError
from mtbert.plugin.interfaces import LoopContext
from mtbert.toolkit.pertask import CHUNK, block_keys
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_component, structure_spec
from mtbert.training.loop import Trainer

from helpers import TINY_ENCODER


R2 = math.sqrt(2.0)


def method(registry, name, **options):
    return make(registry, structure_component("gradients", {"name": name, **options}, registry))


def params(*shapes_or_names):
    """Named zero parameters: ("name", size) pairs, or sizes (named p0, p1, ...)."""
    out = []
    for i, item in enumerate(shapes_or_names):
        name, size = item if isinstance(item, tuple) else (f"p{i}", item)
        out.append((name, nn.Parameter(torch.zeros(size))))
    return out


def linear_losses(shared, grads):
    """{task: sum_k g_tk . w_k}: task t's gradient of parameter k is grads[t][k]."""
    return {t: sum((torch.as_tensor(g, dtype=torch.float32) * p).sum() for g, (_, p) in zip(gs, shared))
            for t, gs in grads.items()}


def step(m, shared, grads):
    """setup, one backward with the given gradients, finish -> (list of .grad, stats)."""
    m.setup(shared, [], list(grads))
    m.backward(linear_losses(shared, grads))
    stats = m.finish()
    return [p.grad for _, p in shared], stats


def setup(m, shared, tasks, private=()):
    m.setup(shared, list(private), tasks)
    m.test_shared = shared  # the parameters in the test's order (setup groups them by block)


def adjusted_rows(m, grads):
    """The per-task adjusted gradients, unflattened in the test's parameter order (after ``setup``)."""
    m.backward(linear_losses(m.test_shared, grads))
    present = sorted(m.slots)  # all tasks, in order: their rows are the buffer's first
    m.slots = {}
    G = m.buffer[:len(present)].clone()
    coef, _ = m.coefficients(m.block_gram(G), present)  # the rows finish() never forms: row i mixes coef[:, i]
    out = torch.stack([m.mix(coef[:, i], G) for i in range(G.shape[0])])
    m.buffer.zero_()
    where = {id(p): o for o, p in m.slices}
    return [[out[r, where[id(p)]:where[id(p)] + p.numel()].view(p.shape) for _, p in m.test_shared]
            for r in range(len(present))]


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# -- PCGrad ---------------------------------------------------------------------------------

def test_pcgrad_two_conflicting_gradients_hand_case(registry):
    m = method(registry, "pcgrad")
    shared = params(2)
    (grad,), stats = step(m, shared, {"a": [[1.0, 0.0]], "b": [[-1.0, 1.0]]})
    # g1' = g1 - (g1.g2/|g2|^2) g2 = (1,0) + 0.5 (-1,1) = (0.5, 0.5); g2' = g2 - (g2.g1/|g1|^2) g1 = (0, 1)
    close(grad, [0.5, 1.5])
    close(stats["cos/a~b"], -1 / R2)
    close(stats["fired"], 1.0)
    assert set(stats) == {"cos/a~b", "fired"}
    assert all(isinstance(v, torch.Tensor) for v in stats.values())


def test_pcgrad_projected_gradients_no_longer_conflict(registry):
    m = method(registry, "pcgrad")
    setup(m, params(2), ["a", "b"])
    (a,), (b,) = adjusted_rows(m, {"a": [[1.0, 0.0]], "b": [[-1.0, 1.0]]})
    close(a, [0.5, 0.5])
    close(b, [0.0, 1.0])
    setup(m, params(7), ["a", "b"])
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):  # random pairs: after projection, no negative dot with the other's original
        g1, g2 = torch.randn(2, 7, generator=gen)
        (a,), (b,) = adjusted_rows(m, {"a": [g1], "b": [g2]})
        assert a @ g2 >= -1e-5 and b @ g1 >= -1e-5
        if g1 @ g2 < 0:
            close(a, g1 - (g1 @ g2) / (g2 @ g2) * g2, atol=1e-5)
        else:
            close(a, g1)


def test_pcgrad_non_conflicting_gradients_pass_through(registry):
    m = method(registry, "pcgrad")
    (grad,), stats = step(m, params(2), {"a": [[1.0, 2.0]], "b": [[3.0, -1.0]]})  # dot = 1 > 0
    close(grad, [4.0, 1.0])
    close(stats["fired"], 0.0)
    close(stats["cos/a~b"], 1 / math.sqrt(5 * 10))


def test_pcgrad_three_tasks_one_conflict_is_order_free(registry):
    # only a and b conflict; c is orthogonal to both (dot 0 is no conflict)
    grads = {"a": [[1.0, 0.0, 0.0]], "b": [[-1.0, 1.0, 0.0]], "c": [[0.0, 0.0, 1.0]]}
    for seed in range(6):
        (grad,), stats = step(method(registry, "pcgrad", seed=seed), params(3), grads)
        close(grad, [0.5, 1.5, 1.0])
        close(stats["fired"], 2 / 6)
        assert set(stats) == {"cos/a~b", "cos/a~c", "cos/b~c", "fired"}


def reference_pcgrad(gs, orders):
    """The paper's loop, for given orders (orders[i]: i's partners in turn)."""
    out = []
    for i, order in enumerate(orders):
        g = gs[i].clone()
        for j in order:
            if g @ gs[j] < 0:
                g = g - (g @ gs[j]) / (gs[j] @ gs[j]) * gs[j]
        out.append(g)
    return out


def test_pcgrad_three_tasks_order_matters_when_all_conflict(registry):
    gs = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), torch.tensor([-1.0, -2.0])]
    # hand case for task 0: partners (1, 2): (1,0) -> (0.5,0.5) -> (0.5,0.5) + 0.3 (-1,-2) = (0.2,-0.1)
    #                       partners (2, 1): (1,0) -> (0.8,-0.4) -> (0.8,-0.4) + 0.6 (-1,1) = (0.2, 0.2)
    close(reference_pcgrad(gs, [[1, 2], [0, 2], [0, 1]])[0], [0.2, -0.1])
    close(reference_pcgrad(gs, [[2, 1], [0, 2], [0, 1]])[0], [0.2, 0.2])
    possible = []
    for o0 in ([1, 2], [2, 1]):
        for o1 in ([0, 2], [2, 0]):
            for o2 in ([0, 1], [1, 0]):
                rows = reference_pcgrad(gs, [o0, o1, o2])
                possible.append((rows, sum(rows)))
    results, firsts = set(), set()
    for seed in range(12):
        m = method(registry, "pcgrad", seed=seed)
        setup(m, params(2), ["a", "b", "c"])
        rows = [r[0] for r in adjusted_rows(m, {t: [g] for t, g in zip("abc", gs)})]
        assert any(all(torch.allclose(r, e, atol=1e-6) for r, e in zip(rows, exp)) for exp, _ in possible)
        (grad,), _ = step(method(registry, "pcgrad", seed=seed), params(2), {t: [g] for t, g in zip("abc", gs)})
        close(grad, sum(rows), atol=1e-6)
        results.add(tuple(round(v, 5) for v in grad.tolist()))
        firsts.add(tuple(round(v, 5) for v in rows[0].tolist()))
    assert firsts == {(0.2, -0.1), (0.2, 0.2)}  # the seed does pick the order
    assert len(results) > 1


# -- granularity ------------------------------------------------------------------------------

def test_granularity_model_layer_tensor_hand_case(registry):
    names = ["encoder.layers.0.a", "encoder.layers.0.b", "encoder.layers.1.c"]
    g1 = [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]
    g2 = [[-1.0, 1.0], [2.0, 2.0], [-1.0, 1.0]]
    # dots: a -1, b 4, c -1; layer 0 (a+b) 3, layer 1 (c) -1, model 2
    expected = {
        "model": ([[0.0, 1.0], [3.0, 3.0], [0.0, 1.0]], 0.0),  # no conflict overall: plain sum
        "layer": ([[0.0, 1.0], [3.0, 3.0], [0.5, 1.5]], 2 / 4),  # only layer 1 projected
        "tensor": ([[0.5, 1.5], [3.0, 3.0], [0.5, 1.5]], 4 / 6),  # a and c projected (both ways), b not
    }
    for granularity, (update, fired) in expected.items():
        shared = params(*[(n, 2) for n in names])
        grads, stats = step(method(registry, "pcgrad", granularity=granularity), shared, {"x": g1, "y": g2})
        for g, e in zip(grads, update):
            close(g, e)
        close(stats["fired"], fired)
        close(stats["cos/x~y"], 2 / (2 * math.sqrt(12)))  # whole-model cosine whatever the granularity


def test_layer_blocks_from_names():
    names = ["encoder.embeddings.word.weight", "encoder.layers.0.attention.query.weight",
             "encoder.embeddings.norm.bias", "encoder.layers.1.ffn_in.bias", "encoder.layers.0.norm.bias",
             "encoder.layers.1.slots.0.down.weight", "encoder.pooler.weight", "adapters.0.w",
             "encoder.layers.12.norm.bias"]
    assert block_keys(names, "layer") == [
        "encoder.embeddings", "layer 0", "encoder.embeddings", "layer 1", "layer 0", "layer 1",
        "encoder.pooler", "adapters", "layer 12"]
    hf = ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.3.output.dense.weight",
          "bert.pooler.dense.bias"]
    assert block_keys(hf, "layer") == ["bert.embeddings", "layer 3", "bert.pooler"]
    assert block_keys(["embeddings.x", "layers.2.w", "pooler.b"], "layer") == ["embeddings", "layer 2", "pooler"]
    assert block_keys(names[:3], "model") == ["model"] * 3
    assert block_keys(names[:3], "tensor") == names[:3]
    albert = ["embeddings.word_embeddings.weight", "encoder.embedding_hidden_mapping_in.weight",
              "encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight",
              "encoder.albert_layer_groups.0.albert_layers.1.ffn.weight", "pooler.weight"]
    assert block_keys(albert, "layer") == [  # ALBERT's shared layers: one block per distinct layer module
        "embeddings", "encoder.embedding_hidden_mapping_in", "layer 0", "layer 1", "pooler"]
    groups = [albert[2], albert[2].replace("groups.0", "groups.1")]
    assert block_keys(groups, "layer") == ["encoder.albert_layer_groups.0.albert layer 0",
                                           "encoder.albert_layer_groups.1.albert layer 0"]


def blockwise_reference(method_name, names, granularity, g1, g2, target=None, beta=0.01):
    """Loop implementation per block (T = 2, so no order question) -> (update per param, new targets)."""
    keys = block_keys(names, granularity)
    blocks = list(dict.fromkeys(keys))
    update = [None] * len(names)
    new_target = {}
    for b, key in enumerate(blocks):
        idx = [k for k, kk in enumerate(keys) if kk == key]
        x, y = torch.cat([g1[k] for k in idx]), torch.cat([g2[k] for k in idx])
        if method_name == "pcgrad":
            xa = x - min(0.0, float(x @ y)) / float(y @ y) * y
            ya = y - min(0.0, float(x @ y)) / float(x @ x) * x
        else:
            def vac(u, v, t):
                phi = float(u @ v) / float(u.norm() * v.norm())
                if phi < t:
                    u = u + u.norm() * (t * math.sqrt(1 - phi ** 2) - phi * math.sqrt(1 - t ** 2)) / (
                        v.norm() * math.sqrt(1 - t ** 2)) * v
                return u, (1 - beta) * t + beta * phi
            xa, new_target[(0, 1, b)] = vac(x, y, float(target[0, 1, b]))
            ya, new_target[(1, 0, b)] = vac(y, x, float(target[1, 0, b]))
        total, offset = xa + ya, 0
        for k in idx:
            n = g1[k].numel()
            update[k] = total[offset:offset + n]
            offset += n
    return update, new_target


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
@pytest.mark.parametrize("granularity", ["model", "layer", "tensor"])
def test_vectorized_blocks_match_a_loop_over_blocks(registry, name, granularity):
    # interleaved layers, sizes crossing CHUNK boundaries, a block bigger than CHUNK
    sizes = {"encoder.layers.1.x": CHUNK + 500, "encoder.embeddings.w": 3, "encoder.layers.0.y": CHUNK,
             "encoder.layers.1.z": 7, "encoder.pooler.b": 5, "encoder.layers.0.q": 1}
    names = list(sizes)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        g1 = [torch.randn(n, generator=gen) for n in sizes.values()]
        g2 = [torch.randn(n, generator=gen) - 0.3 * a for n, a in zip(sizes.values(), g1)]
        m = method(registry, name, granularity=granularity)
        shared = params(*sizes.items())
        m.setup(shared, [], ["a", "b"])
        target = None
        if name == "gradvac":
            m.target.uniform_(-0.8, 0.8, generator=gen)
            target = m.target.clone()
        m.backward(linear_losses(shared, {"a": g1, "b": g2}))
        m.finish()
        update, new_target = blockwise_reference(name, names, granularity, g1, g2, target)
        for (_, p), e in zip(shared, update):
            close(p.grad, e, atol=1e-4)
        for (i, j, b), value in new_target.items():
            close(m.target[i, j, b], value, atol=1e-5)


# -- GradVac --------------------------------------------------------------------------------

def test_gradvac_first_step_makes_conflicting_gradients_orthogonal(registry):
    m = method(registry, "gradvac", beta=0.01)
    setup(m, params(2), ["a", "b"])
    (a,), (b,) = adjusted_rows(m, {"a": [[1.0, 0.0]], "b": [[-1.0, 1.0]]})
    # phi = -1/sqrt2 < 0 = phi_hat: g1' = g1 + |g1| (0 - phi) / |g2| g2 = (1,0) + 0.5 (-1,1)
    close(a, [0.5, 0.5])
    close(b, [0.0, 1.0])
    close(a @ torch.tensor([-1.0, 1.0]), 0.0)
    # EMA: phi_hat <- 0.99 * 0 + 0.01 * phi, for both ordered pairs
    close(m.target[0, 1], [-0.01 / R2])
    close(m.target[1, 0], [-0.01 / R2])
    (grad,), stats = step(method(registry, "gradvac"), params(2), {"a": [[1.0, 0.0]], "b": [[-1.0, 1.0]]})
    close(grad, [0.5, 1.5])
    close(stats["fired"], 1.0)


def test_gradvac_reaches_a_nonzero_target(registry):
    m = method(registry, "gradvac", beta=0.1)
    setup(m, params(2), ["a", "b"])
    m.target.fill_(0.5)
    (a,), (b,) = adjusted_rows(m, {"a": [[1.0, 0.0]], "b": [[0.0, 1.0]]})
    # phi = 0 < 0.5: g1' = (1,0) + 1 * (0.5 * 1 - 0) / (1 * sqrt(0.75)) (0,1) = (1, 1/sqrt3)
    close(a, [1.0, 1 / math.sqrt(3)])
    close(b, [1 / math.sqrt(3), 1.0])
    close(torch.nn.functional.cosine_similarity(a, torch.tensor([0.0, 1.0]), dim=0), 0.5, atol=1e-5)
    close(m.target[0, 1], [0.9 * 0.5 + 0.1 * 0.0])


def test_gradvac_after_firing_cosine_equals_previous_target(registry):
    gen = torch.Generator().manual_seed(3)
    fired_blocks = 0
    for _ in range(10):
        m = method(registry, "gradvac", granularity="tensor", beta=0.2)
        shared = params(("p.u", 5), ("p.v", 3))
        setup(m, shared, ["a", "b"])
        m.target.uniform_(-0.9, 0.9, generator=gen)
        before = m.target.clone()
        g1 = [torch.randn(5, generator=gen), torch.randn(3, generator=gen)]
        g2 = [torch.randn(5, generator=gen), torch.randn(3, generator=gen)]
        rows = adjusted_rows(m, {"a": g1, "b": g2})
        for (i, j, gi, gj) in ((0, 1, g1, g2), (1, 0, g2, g1)):
            for b in range(2):
                phi = torch.nn.functional.cosine_similarity(gi[b], gj[b], dim=0)
                after = torch.nn.functional.cosine_similarity(rows[i][b], gj[b], dim=0)
                if phi < before[i, j, b]:
                    fired_blocks += 1
                    close(after, before[i, j, b], atol=1e-5)
                else:
                    close(rows[i][b], gi[b])  # no change when phi >= phi_hat
                close(m.target[i, j, b], 0.8 * before[i, j, b] + 0.2 * phi, atol=1e-6)
    assert 5 < fired_blocks < 40  # both branches were exercised


def test_gradvac_leaves_gradients_when_cosine_is_above_target(registry):
    m = method(registry, "gradvac", beta=0.01)
    shared = params(2)
    m.setup(shared, [], ["a", "b"])
    m.target.fill_(-0.5)
    m.backward(linear_losses(shared, {"a": [[1.0, 0.0]], "b": [[-1.0, 2.0]]}))  # cos = -1/sqrt5 > -0.5
    stats = m.finish()
    close(shared[0][1].grad, [0.0, 2.0])
    close(stats["fired"], 0.0)
    close(m.target[0, 1], [0.99 * -0.5 + 0.01 * (-1 / math.sqrt(5))])


def test_gradvac_targets_are_indexed_by_task_position(registry):
    m = method(registry, "gradvac", beta=0.5)
    shared = params(2)
    m.setup(shared, [], ["a", "b", "c"])
    m.backward(linear_losses(shared, {"a": [[1.0, 0.0]], "c": [[0.0, 1.0]]}))  # b absent this step
    stats = m.finish()
    assert set(stats) == {"cos/a~c", "fired"}
    close(shared[0][1].grad, [1.0, 1.0])  # orthogonal, phi = 0 = target: unchanged
    expected = torch.zeros(3, 3, 1)
    assert torch.equal(m.target, expected)  # EMA of 0 with a cosine of 0
    m.backward(linear_losses(shared, {"a": [[1.0, 0.0]], "c": [[1.0, 1.0]]}))
    m.finish()
    expected[0, 2] = expected[2, 0] = 0.5 / R2
    close(m.target, expected)


# -- heads, accumulation, precision ----------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4))
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})

    def shared(self):
        return [("encoder." + n, p) for n, p in self.encoder.named_parameters()]

    def losses(self, xs, signs):
        return {t: signs[t] * self.heads[t](self.encoder(xs[t])).pow(2).mean() for t in ("a", "b")}


def test_heads_get_their_own_gradient_and_shared_parameters_the_projected_sum(registry):
    model = Tiny()
    xs = {"a": torch.randn(8, 3), "b": torch.randn(8, 3)}
    shared = model.shared()
    sp = [p for _, p in shared]
    flat = lambda gs: torch.cat([g.reshape(-1) for g in gs])  # noqa: E731
    signs = {"a": 1.0, "b": 1.0}
    ga, gb = (flat(torch.autograd.grad(model.losses(xs, signs)[t], sp)) for t in ("a", "b"))
    if ga @ gb > 0:
        signs["b"] = -1.0  # make the tasks conflict
        gb = -gb
    assert ga @ gb < 0
    ha = torch.autograd.grad(model.losses(xs, signs)["a"], list(model.heads["a"].parameters()))
    hb = torch.autograd.grad(model.losses(xs, signs)["b"], list(model.heads["b"].parameters()))
    expected = (ga - (ga @ gb) / (gb @ gb) * gb) + (gb - (gb @ ga) / (ga @ ga) * ga)

    m = method(registry, "pcgrad")
    m.setup(shared, list(model.heads.parameters()), ["a", "b"])
    m.backward(model.losses(xs, signs))
    stats = m.finish()
    close(flat([p.grad for p in sp]), expected, atol=1e-6)
    assert not torch.allclose(expected, ga + gb, atol=1e-3)
    for p, g in zip(model.heads["a"].parameters(), ha):
        close(p.grad, g)
    for p, g in zip(model.heads["b"].parameters(), hb):
        close(p.grad, g)
    close(stats["cos/a~b"], (ga @ gb) / (ga.norm() * gb.norm()), atol=1e-6)


def test_accumulation_projects_the_summed_micro_batches(registry):
    m = method(registry, "pcgrad")
    shared = params(2)
    head = nn.Parameter(torch.zeros(2))  # private: its micro-batch gradients just add up
    m.setup(shared, [head], ["a", "b"])

    def losses(grads, head_grads):
        out = linear_losses(shared, grads)
        return {t: loss + (torch.tensor(head_grads[t]) * head).sum() for t, loss in out.items()}

    # projected alone, the first micro-batch gives (0.5, 1.5), the second (2, 1)
    m.backward(losses({"a": [[1.0, 0.0]], "b": [[-1.0, 1.0]]}, {"a": [1.0, 0.0], "b": [0.0, 2.0]}))
    m.backward(losses({"a": [[1.0, 0.0]], "b": [[1.0, 1.0]]}, {"a": [3.0, 0.0], "b": [0.0, -1.0]}))
    assert shared[0][1].grad is None  # nothing written before finish
    close(head.grad, [4.0, 1.0])
    stats = m.finish()
    # sums (2,0) and (0,2) are orthogonal: no projection -> (2, 2), not (0.5,1.5) + (2,1) = (2.5, 2.5)
    close(shared[0][1].grad, [2.0, 2.0])
    close(stats["fired"], 0.0)
    close(head.grad, [4.0, 1.0])
    # the buffer starts afresh after finish
    shared[0][1].grad = None
    m.backward(linear_losses(shared, {"a": [[1.0, 0.0]], "b": [[-1.0, 1.0]]}))
    m.finish()
    close(shared[0][1].grad, [0.5, 1.5])


def test_accumulation_with_a_task_missing_from_one_micro_batch(registry):
    m = method(registry, "pcgrad")
    shared = params(2)
    m.setup(shared, [], ["a", "b"])
    m.backward(linear_losses(shared, {"a": [[0.5, 0.0]], "b": [[-1.0, 1.0]]}))
    m.backward(linear_losses(shared, {"a": [[0.5, 0.0]]}))
    m.finish()
    close(shared[0][1].grad, [0.5, 1.5])


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "mgda", "imtl"])
def test_bf16_autocast_matches_fp32(registry, name):
    model = Tiny()
    xs = {"a": torch.randn(16, 3), "b": torch.randn(16, 3)}
    signs = {"a": 1.0, "b": -1.0}
    results = []
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        m = method(registry, name, granularity="tensor")
        m.setup(model.shared(), list(model.heads.parameters()), ["a", "b"], LoopContext())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = model.losses(xs, signs)
            assert (model.encoder(xs["a"]).dtype == torch.bfloat16) == bf16
            m.backward(losses)
            stats = m.finish()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
        assert all(torch.isfinite(v) for v in stats.values())
        results.append(torch.cat([g.reshape(-1) for g in grads]))
    fp32, bf16 = results
    assert 0 < (bf16 - fp32).norm() <= 0.03 * fp32.norm()


# -- end to end ---------------------------------------------------------------------------------

def toy_data(directory, n=48):
    rng = random.Random(0)
    words = "the a movie film plot actor scene story it was is and of".split()
    directory.mkdir(parents=True, exist_ok=True)
    sent, pairs = ["id\tsentence\tlabel"], ["id\ts1\ts2\tscore"]
    for i in range(n):
        sent.append(f"r{i}\t{' '.join(rng.sample(words, 4) + ['good' if i % 2 else 'bad'])}\t{i % 2}")
        k = rng.randint(0, 3)
        pairs.append(f"p{i}\t{' '.join(rng.sample(words, 3) + ['wow'] * k)}\t{rng.choice(words)}\t{k}")
    (directory / "sent.tsv").write_text("\n".join(sent) + "\n")
    (directory / "pairs.tsv").write_text("\n".join(pairs) + "\n")
    return directory


def spec_data(directory, gradient, sampler):
    return {
        "name": "surgery", "seed": 3, "encoder": dict(TINY_ENCODER), "gradient": gradient, "sampler": sampler,
        "data": {"dir": str(directory), "max_length": 16},
        "train": {"batch_size": 16, "lr": 3e-3, "log_every": 1, "steps": 2, "device": "cpu"},
        "tasks": {
            "sent": {"data": {"train": "sent.tsv", "dev": "sent.tsv"},
                     "head": {"name": "classifier", "num_labels": 2, "pooling": "mean"},
                     "loss": "cross_entropy", "metrics": ["accuracy"]},
            "count": {"data": {"train": "pairs.tsv", "dev": "pairs.tsv", "text": "s1", "text_pair": "s2",
                               "label": "score"},
                      "head": {"name": "regression", "pooling": "mean"}, "loss": "mse", "metrics": ["pearson"]},
        },
    }


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_one_task_per_step_sampler_is_refused(registry, tmp_path, name):
    with pytest.raises(SpecError) as error:
        structure_spec(spec_data(toy_data(tmp_path), name, "round_robin"), registry)
    assert "all_tasks" in str(error.value)
    assert any(path == "gradient" for path, _ in error.value.problems)


@pytest.mark.parametrize("gradient", ["pcgrad", {"name": "gradvac", "granularity": "layer"}, "mgda", "imtl"],
                         ids=["pcgrad", "gradvac-layer", "mgda", "imtl"])
def test_trains_two_steps_on_the_tiny_encoder(registry, tmp_path, gradient):
    spec = structure_spec(spec_data(toy_data(tmp_path / "data"), gradient, "all_tasks"), registry)
    trainer = Trainer(spec, registry, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    seen = []
    original = trainer.optimizer_step
    trainer.optimizer_step = lambda micro_batches: seen.append(original(micro_batches)) or seen[-1]
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    assert trainer.step == 2
    statistic = trainer.parts.gradient.statistic  # "fired" for surgery, "max_weight" for MGDA / IMTL-G
    stats = seen[-1]  # what the last step handed to the log
    assert set(stats) == {"cos/sent~count", statistic}
    assert -1.0 <= float(stats["cos/sent~count"]) <= 1.0
    value = float(stats[statistic])
    assert 0.0 <= value <= 1.0 if statistic == "fired" else math.isfinite(value)
    after = dict(trainer.model.named_parameters())
    for name in ("encoder.layers.0.ffn_in.weight", *(n for n in before if n.startswith("heads."))):
        assert not torch.equal(before[name], after[name]), name
    if isinstance(gradient, dict):
        assert trainer.parts.gradient.block_names == ["encoder.embeddings", "layer 0", "layer 1", "encoder.pooler"]
        assert trainer.parts.gradient.target.shape == (2, 2, 4)
        assert trainer.parts.gradient.target.abs().sum() > 0
