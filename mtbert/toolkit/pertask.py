"""Per-task gradients of the shared parameters: the helper for gradient methods that need them.

Built-in users: PCGrad and GradVac (plugins/gradients/).

:class:`PerTaskGradients` keeps one flat float32 row per task of the step, ``[T, P]`` for
the P shared parameter values, and sums into it every micro-batch's gradient
of that task (one ``autograd.grad`` per task loss). ``finish`` hands the rows
of the tasks seen since the last optimizer step to the subclass: its
``coefficients(gram, present)`` (the adjusted rows as combinations of the
rows, from the blocks' Gram matrices) or ``update(G, present)`` (the update
itself), and the adjusted rows' sum becomes the shared parameters' ``.grad``. So with gradient accumulation the surgery acts
on the accumulated per-task gradients, once per optimizer step. Private
parameters (heads, task-specific adapters) just receive each task's gradient.

Surgery acts per *block* of the flat vector: the whole model, one block per
transformer layer (plus one per top-level part outside the layers, e.g. the
embeddings and the pooler), or one block per parameter tensor.

The cheap part: every adjusted gradient stays in the span of the original
task gradients, g_i' = sum_j a_ij g_j, and every quantity the methods need
(dot products, norms, cosines) is a function of the blocks' Gram matrices
G_b G_b^T. So ``finish`` reads the [T, P] rows once to get the [B, T, T] Gram
matrices, runs the method on T x T coefficients (``coefficients``), and reads
the rows once more to form the update sum_i g_i' = sum_j (sum_i a_ij) g_j.
Blocks are contiguous and each starts at a multiple of ``CHUNK`` (zeros in
between): per-chunk Gram matrices come from one batched matmul, a one-hot
chunk -> block matrix sums them per block, and the same matrix spreads the
per-block weights back over the chunks -- tensor ops whatever the number or
sizes of the blocks, with no loop over parameters or blocks.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from mtbert.plugin.interfaces import GradientMethod, LoopContext

CHUNK = 1024  # block alignment in the flat vector (at most CHUNK - 1 zeros of padding per block)
EPS = 1e-30  # kept for plugins that import it; the built-in methods divide only by what they check is non-zero
# The rows are float32: two gradients closer to dependent than a few units of float32's epsilon
# (relative to their norms) cannot be told apart from dependent ones. Rank decisions on the Gram
# matrix are made at this precision (see ``rank_tolerance``).
ROW_EPS = torch.finfo(torch.float32).eps
SLAB_BYTES = {"cpu": 8 << 20, "other": 256 << 20}  # float64 scratch for one pass of the Gram matrix
GRANULARITIES = ("model", "layer", "tensor")

# ``layer.K.`` / ``layers.K.`` after a dot or an underscore: BERT's ``encoder.layer.3.``, ModernBERT's
# ``layers.3.``, ALBERT's ``albert_layer_groups.0.albert_layers.0.`` (its layers are shared by depth)
_LAYER = re.compile(r"(?:^|[._])layers?\.(\d+)\.")


def block_keys(names: list[str], granularity: str) -> list[str]:
    """One key per parameter name; parameters with the same key form a block.

    "layer": every name containing ``layer.K.`` or ``layers.K.`` is in block
    "layer K"; any other name is grouped by its top-level part next to the
    layers, e.g. ``encoder.embeddings`` and ``encoder.pooler`` (the part of
    the name it shares with the layers' container, plus one component)."""
    if granularity == "model":
        return ["model"] * len(names)
    if granularity == "tensor":
        return list(names)
    if granularity != "layer":
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    containers = {name[:m.start()] for name in names if (m := _LAYER.search(name))}
    container = min(containers, key=len) if containers else ""
    inside = container.split(".") if container else []
    keys = []
    for name in names:
        match = _LAYER.search(name)
        if match:  # layers of several containers (ALBERT's groups) are told apart by their container
            where = name[:match.start()]
            keys.append(f"layer {match.group(1)}" if len(containers) == 1 else f"{where} layer {match.group(1)}")
            continue
        parts = name.split(".")
        k = 0
        while k < len(inside) and k < len(parts) - 1 and parts[k] == inside[k]:
            k += 1
        keys.append(".".join(parts[:k + 1]))
    return keys


class PerTaskGradients(GradientMethod):
    """Base of gradient surgery: subclasses implement ``coefficients`` (or ``update``).

    ``options`` may have ``seed``: a method that draws (the random order of the other tasks
    that PCGrad and GradVac adjust each task against, ``partners``) gets a generator seeded by
    it, kept in its state for ``--resume``; a method that draws nothing has none. Methods that
    work per block have ``granularity``. ``needs_all_tasks`` is set here already."""

    needs_all_tasks = True
    # the name under which the second value ``coefficients`` returns is logged (gradient/<name>)
    statistic = "fired"
    # True: ``backward`` also sums each task's (scaled) loss, for ``step_losses``
    tracks_losses = False

    def __init__(self, options):
        self.options = options
        seed = getattr(options, "seed", None)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    # -- the GradientMethod interface -------------------------------------------------
    def setup(self, shared: list[tuple[str, nn.Parameter]], private: list[nn.Parameter],
              tasks: list[str], context: LoopContext | None = None) -> None:
        self.context = context or LoopContext()
        # a method without blocks (an elementwise rule) has no granularity option: one block
        keys = block_keys([name for name, _ in shared], getattr(self.options, "granularity", "model"))
        members: dict[str, list[nn.Parameter]] = {}
        for key, (_, param) in zip(keys, shared):
            members.setdefault(key, []).append(param)
        self.block_names = list(members)
        self.params = [p for block in members.values() for p in block]  # each block contiguous
        self.private, self.tasks = list(private), list(tasks)
        self.slices: list[tuple[int, nn.Parameter]] = []  # (offset in the flat vector, parameter)
        chunks, offset = [], 0
        for block in members.values():
            start = offset
            for param in block:
                self.slices.append((offset, param))
                offset += param.numel()
            chunks.append(-(-(offset - start) // CHUNK))
            offset = start + chunks[-1] * CHUNK
        device = self.params[0].device if self.params else torch.device("cpu")
        self.num_blocks, self.num_chunks, self.size = len(chunks), offset // CHUNK, offset
        block_of_chunk = torch.repeat_interleave(torch.arange(len(chunks)), torch.tensor(chunks, dtype=torch.long))
        # [C, B] one-hot: which block each chunk belongs to (sums per block, spreads weights back)
        members = torch.zeros(self.num_chunks, self.num_blocks)
        members[torch.arange(self.num_chunks), block_of_chunk] = 1.0
        self.members = members.to(device)
        self.members64 = self.members.double()
        budget = SLAB_BYTES["cpu" if device.type == "cpu" else "other"]
        self.slab_chunks = max(1, min(self.num_chunks, budget // (8 * CHUNK * max(1, len(tasks)))))
        self.slab: Tensor | None = None  # float64 scratch of block_gram, made on first use
        self.per_chunk: Tensor | None = None
        self.buffer = torch.zeros(len(self.tasks), self.size, dtype=torch.float32, device=device)
        self.rows = [[self.buffer[t, o:o + p.numel()].view(p.shape) for o, p in self.slices]
                     for t in range(len(self.tasks))]
        # row of the buffer each task of the current optimizer step writes into, in the order the
        # tasks came: a step with some of the tasks fills the first rows, so they are handed on as a
        # view of the buffer rather than gathered into a fresh [T', P] copy (costly page faults on a CPU)
        self.slots: dict[int, int] = {}
        self.loss_sums = self.buffer.new_zeros(len(self.tasks))  # for ``step_losses``, on the device

    def backward(self, losses: dict[str, Tensor]) -> None:
        inputs = self.params + self.private
        n = len(self.params)
        for task, loss in losses.items():
            t = self.tasks.index(task)
            slot = self.slots.setdefault(t, len(self.slots))
            if self.tracks_losses:
                self.loss_sums[t] += loss.detach().float()
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
            pairs = [(row, g) for row, g in zip(self.rows[slot], grads[:n]) if g is not None]
            if pairs:
                torch._foreach_add_([row for row, _ in pairs], [g.float() for _, g in pairs])
            for param, g in zip(self.private, grads[n:]):
                if g is None:
                    continue
                if param.grad is None:
                    param.grad = g.to(param.dtype).clone()
                else:
                    param.grad.add_(g)

    def finish(self) -> dict[str, Tensor]:
        present, slots = sorted(self.slots), self.slots
        self.slots = {}
        if not present or self.size == 0:
            return {}
        used = self.buffer[:len(present)]
        self.context.average([used])  # each task's gradient over every rank's shard (no-op in one process)
        # rows in task order; only when accumulated micro-steps brought the tasks out of order, a copy
        G = used if all(slots[t] == i for i, t in enumerate(present)) else rows(used, [slots[t] for t in present])
        update, stats = self.update(G, present)
        for offset, param in self.slices:
            g = update[offset:offset + param.numel()].view(param.shape).to(param.dtype)
            if param.grad is None:
                param.grad = g
            else:
                param.grad.add_(g)
        used.zero_()
        return stats

    def state_dict(self) -> dict:
        """What a resumed run needs: the order generator, if the method draws (and a subclass's
        running state)."""
        return {"generator": self.generator.get_state()} if self.generator is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.generator is not None:
            self.generator.set_state(state["generator"])

    # -- for subclasses ------------------------------------------------------------------------
    def update(self, G: Tensor, present: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
        """[T, P] per-task rows (the tasks at positions ``present``) -> (the [P] update, stats to log).

        The default: the Gram matrices, ``coefficients`` on them, and the update as one
        combination of the rows. A method that is not a combination of the current rows
        (an elementwise rule, a running average of past gradients) overrides this."""
        gram = self.block_gram(G)
        coef, statistic = self.coefficients(gram, present)
        update = self.mix(coef.sum(1), G)  # sum_i g_i' = sum_j (sum_i a_ij) g_j, block by block
        stats = self.cosines(gram.sum(0), [self.tasks[t] for t in present])
        stats[self.statistic] = statistic
        return update, stats

    def step_losses(self, present: list[int]) -> Tensor:
        """The step's loss of each task at ``present``, over the global batch ([T'], on the device),
        for methods that set ``tracks_losses``; the sums restart."""
        self.context.average([self.loss_sums])  # every process's shard: the global batch's losses
        losses = torch.stack([self.loss_sums[t] for t in present])
        self.loss_sums.zero_()
        return losses

    def coefficients(self, gram: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        """[B, T, T] Gram matrices of the task gradients, block by block (rows: the tasks at
        positions ``present`` in ``self.tasks``) -> ([B, T, T] coefficients a with
        g_i' = sum_j a[b, i, j] g_j in block b, fraction of (i, j, block) checks that fired)."""
        raise NotImplementedError

    # -- block algebra ---------------------------------------------------------------------------
    def block_gram(self, G: Tensor, exact: bool = True) -> Tensor:
        """[T, P] float32 rows -> [B, T, T] float64: G_b G_b^T for every block b.

        ``exact = False``: each chunk's products summed in float32 (three times faster on a CPU,
        ~1e-7 relative error, overflows for rows of norm above ~1e19): for statistics only.

        Accumulated in float64: a product of two float32 values is exact in float64, so this is the
        rows' own Gram matrix to float64 rounding. Accumulated in float32 it would overflow for rows
        of norm above ~1e19 and carry errors of ~1e-7 |g_i| |g_j|, as large as the smallest eigenvalue
        of nearly dependent gradients: rank decisions and the near-singular systems of IMTL-G and
        Nash-MTL would be made on noise. The rows pass through a float64 scratch of a few MB, slab by
        slab (one batched matmul each), kept between steps."""
        count = G.shape[0]
        if not exact:
            chunks = G.view(count, self.num_chunks, CHUNK)
            with torch.autocast(G.device.type, enabled=False):
                per_chunk = torch.einsum("icx,jcx->cij", chunks, chunks).double()
            return (self.members64.T @ per_chunk.reshape(self.num_chunks, -1)).view(self.num_blocks, count, count)
        if self.slab is None or self.slab.shape[0] < count or self.slab.device != G.device:
            self.slab = torch.empty(len(self.tasks), self.slab_chunks, CHUNK, dtype=torch.float64, device=G.device)
            self.per_chunk = torch.empty(self.num_chunks * len(self.tasks) ** 2, dtype=torch.float64, device=G.device)
        chunks = G.view(count, self.num_chunks, CHUNK)
        per_chunk = self.per_chunk[:self.num_chunks * count * count].view(self.num_chunks, count, count)
        with torch.autocast(G.device.type, enabled=False):
            for start in range(0, self.num_chunks, self.slab_chunks):
                stop = min(self.num_chunks, start + self.slab_chunks)
                slab = self.slab[:count, :stop - start]
                slab.copy_(chunks[:, start:stop])
                per_chunk[start:stop] = torch.einsum("icx,jcx->cij", slab, slab)
        return (self.members64.T @ per_chunk.reshape(self.num_chunks, -1)).view(self.num_blocks, count, count)

    def mix(self, weights: Tensor, G: Tensor) -> Tensor:
        """[B, T] weights, [T, P] rows -> [P]: sum_j weights[b, j] G[j] within each block b."""
        per_chunk = self.members @ weights.to(G.dtype)  # [C, T]: each chunk takes its block's weights
        return torch.einsum("ct,tcx->cx", per_chunk, G.view(G.shape[0], self.num_chunks, CHUNK)).reshape(-1)

    @staticmethod
    def identity(gram: Tensor) -> Tensor:
        """[B, T, T] coefficients of the unchanged gradients (g_i' = g_i), a subclass's starting point."""
        blocks, count, _ = gram.shape
        return torch.eye(count, dtype=gram.dtype, device=gram.device).expand(blocks, count, count).clone()

    @staticmethod
    def fired_fraction(fired: Tensor, gram: Tensor) -> Tensor:
        """The number of (i, j, block) checks that fired, as a fraction of all of them."""
        blocks, count, _ = gram.shape
        return fired / max(1, count * (count - 1) * blocks)

    def partners(self, count: int) -> Tensor:
        """Random orders of the others, [T - 1, T] on the buffer's device: row k holds each task's
        k-th partner (row indices). Drawn on the host's generator (so a resumed run draws alike)
        and moved in one copy per step."""
        orders = []
        for i in range(count):
            others = [j for j in range(count) if j != i]
            orders.append([others[k] for k in torch.randperm(count - 1, generator=self.generator).tolist()])
        return self.index([list(column) for column in zip(*orders)])

    def index(self, values: list) -> Tensor:
        """Indices (a list, or a list of lists) as a tensor on the buffer's device, copied without a sync."""
        host = torch.tensor(values, dtype=torch.long)
        if self.buffer.is_cuda:  # from pageable memory even a non-blocking copy may wait for the GPU
            host = host.pin_memory()
        return host.to(self.buffer.device, non_blocking=True)

    @staticmethod
    def cosines(gram: Tensor, names: list[str]) -> dict[str, Tensor]:
        """Whole-model cosine of every unordered pair of (original) task gradients, from their Gram matrix."""
        norms = gram.diagonal().clamp_min(0).sqrt()
        cos = safe_divide(gram, norms[:, None] * norms[None, :])
        return {f"cos/{a}~{b}": cos[i, j] for i, a in enumerate(names) for j, b in enumerate(names) if i < j}


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, and 0 where the denominator is 0 (a zero gradient): no absolute
    epsilon, so the result does not depend on the gradients' scale."""
    zero = denominator == 0
    return torch.where(zero, torch.zeros_like(numerator), numerator / torch.where(zero, 1.0, denominator))


def normalized(gram: Tensor) -> Tensor:
    """[B, T, T] Gram matrices divided by their traces (all-zero blocks left as they are): the
    T x T methods solve scale-free problems, so that d(s G) = s d(G) for any scale s."""
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    return safe_divide(gram, trace[:, None, None].expand_as(gram))


def rank_tolerance(count: int) -> float:
    """Eigenvalues of a normalized Gram matrix at or below this (relative to the largest) count as
    zero: a component of a gradient smaller than ``count`` float32 epsilons of the largest gradient's
    norm is at the rows' rounding level (its eigenvalue is that ratio squared)."""
    return (count * ROW_EPS) ** 2


def rows(x: Tensor, index: list[int]) -> Tensor:
    """x[index] for a short list of row indices, without moving an index tensor to the device."""
    return torch.stack([x[i] for i in index])
