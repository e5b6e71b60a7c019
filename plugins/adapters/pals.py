"""pals: Projected Attention Layers, Stickland & Murray (2019), "BERT and PALs:
Projected Attention Layers for Efficient Adaptation in Multi-Task Learning", ICML.

Each task t with a PAL gets an encoder ``V_E^t`` (d_m -> d_s) and a decoder
``V_D^t`` (d_s -> d_m) shared by all layers, and in every layer l its own small
multi-head self-attention ``Attn_l^t`` in the d_s space (queries, keys and
values projected, no output matrix: ``V_D^t`` plays that role). In parallel
with each BERT layer, for layer input h and post-attention state
a = LN(h + SA(h)), the layer output becomes

    LN(a + FFN(a) + TS_l^t(h)),    TS_l^t(h) = g(V_D^t Attn_l^t(V_E^t h))

and only the batch's own task's PAL runs (tasks without one get the plain
layer). What we followed, checked against the authors' code
(github.com/AsaCooperStickland/Bert-n-Pals, ``modeling.py``: ``BERTPals``,
``BERTLayer``, ``BERTEncoder``):

- the placement: the PAL output is added next to the feed-forward output
  inside the layer's last LayerNorm, computed from the layer *input* h;
- ``V_E``, ``V_D`` are linear maps with biases, one pair per task shared by
  all layers; the attention is BERT's (Q, K, V linears with biases, softmax
  of QK^T / sqrt(d_head), padded keys masked, dropout on the attention
  probabilities), 6 heads, d_s = 204 for BERT-base (768);
- the nonlinearity: the paper writes the adapter family as
  TS(h) = V_D g(V_E h) with g = multi-head attention for PALs; the released
  code then applies GELU to the decoded output, GELU(V_D Attn(V_E h)).
  ``activation = "gelu"`` (default) is that; ``"identity"`` drops it,
  TS = V_D Attn(V_E h) (report 001's "g identity"). The paper and code win
  over METHODS.md's ``V_D g(Attn(V_E h))``, which puts g between the
  attention and V_D.

One deliberate difference: ``V_D`` (weight and bias) starts at zero, so
TS = 0 (GELU(0) = 0) and training starts exactly from the pretrained
encoder's function; the authors initialise it like any BERT linear.
Everything else starts as BERT does: N(0, 0.02) weights, zero biases.

Sizes: ``size`` (d_s) defaults to the paper's 204/768 of the encoder width,
rounded to a multiple of ``heads``: ``heads * max(1, round(hidden * 204 /
(768 * heads)))`` (102 for MiniLM's 384, 204 for BERT-base). Per task that
is ``2 d_m d_s + d_m + d_s + L * 3 (d_s^2 + d_s)`` parameters.

The returned module holds every PAL parameter and is ``task_specific``
(gradient methods treat it as private to its tasks). The per-layer branches
it installs in ``encoder.layer_slots`` hold no parameters of their own,
only a reference to it, so each PAL tensor appears once in the model's state
dict (a tensor registered under two names would make safetensors refuse to
save the checkpoint).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch.nn.functional as F
from torch import Tensor, nn

from mtbert.base.errors import PluginError
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.structure import at_least, non_empty, probability

PAPER_SIZE, PAPER_HIDDEN = 204, 768  # d_s and d_m of the paper's BERT-base PALs


@attrs.frozen
class PalsOptions:
    size: int | None = attrs.field(default=None, validator=at_least(1))  # d_s; None: scaled from the paper
    heads: int = attrs.field(default=6, validator=at_least(1))
    activation: Literal["identity", "gelu"] = "gelu"
    tasks: list[str] | None = attrs.field(default=None, validator=non_empty)  # None: every task
    dropout: float | None = attrs.field(default=None, validator=probability)  # None: the encoder's attention dropout

    def check(self):
        if self.size is not None and self.size % self.heads:
            yield "size", f"must be a multiple of heads ({self.heads}), got {self.size}"
        if self.tasks is not None and len(set(self.tasks)) != len(self.tasks):
            yield "tasks", "names a task twice"


def default_size(hidden: int, heads: int) -> int:
    """The paper's d_s = 204 for d_m = 768, scaled to ``hidden`` and rounded to a multiple of ``heads``."""
    return heads * max(1, round(hidden * PAPER_SIZE / (PAPER_HIDDEN * heads)))


def _bert_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


class PalAttention(nn.Module):
    """Multi-head self-attention in the d_s space, without an output matrix."""

    def __init__(self, size: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.query = nn.Linear(size, size)
        self.key = nn.Linear(size, size)
        self.value = nn.Linear(size, size)

    def split(self, x: Tensor) -> Tensor:  # [B, T, d_s] -> [B, heads, T, d_s / heads]
        b, t, _ = x.shape
        return x.view(b, t, self.heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.p if self.training else 0.0)
        return ctx.transpose(1, 2).reshape(x.shape)


class TaskPal(nn.Module):
    """One task's PAL: V_E, V_D shared across layers, one attention per layer."""

    def __init__(self, hidden: int, size: int, heads: int, layers: int, dropout: float, gelu: bool):
        super().__init__()
        self.encode = nn.Linear(hidden, size)  # V_E
        self.decode = nn.Linear(size, hidden)  # V_D
        self.attention = nn.ModuleList(PalAttention(size, heads, dropout) for _ in range(layers))
        self.gelu = gelu
        self.apply(_bert_init)
        nn.init.zeros_(self.decode.weight)  # TS = 0 at the start: the pretrained encoder's function
        nn.init.zeros_(self.decode.bias)

    def forward(self, layer: int, h: Tensor, attn_mask: Tensor) -> Tensor:
        out = self.decode(self.attention[layer](self.encode(h), attn_mask))
        return F.gelu(out) if self.gelu else out


class Pals(nn.Module):
    """Every task's PAL (the module the model holds; private to the tasks)."""

    task_specific = True
    needs_layer_slots = True  # a branch in every layer: validation refuses encoders without slots

    def __init__(self, hidden: int, size: int, heads: int, layers: int, tasks: list[str], dropout: float,
                 gelu: bool):
        super().__init__()
        self.size, self.heads = size, heads
        self.pals = nn.ModuleDict({t: TaskPal(hidden, size, heads, layers, dropout, gelu) for t in tasks})

    def branch(self, layer: int, h: Tensor, attn_mask: Tensor, task: str | None) -> Tensor | None:
        if task is None or task not in self.pals:
            return None
        return self.pals[task](layer, h, attn_mask)


class PalBranch(nn.Module):
    """What sits in one layer's slot: calls the PALs for that layer.

    It keeps the :class:`Pals` module in its ``__dict__``, not as a child, so
    the PAL parameters are registered (and saved) once, under the adapter."""

    def __init__(self, pals: Pals, layer: int):
        super().__init__()
        self.__dict__["pals"] = pals
        self.layer = layer

    def forward(self, h: Tensor, a: Tensor, attn_mask: Tensor, task: str | None) -> Tensor | None:
        return self.pals.branch(self.layer, h, attn_mask, task)

    def extra_repr(self) -> str:
        return f"layer={self.layer}"


def build_pals(options: PalsOptions, encoder, tasks: list[str]) -> Pals:
    """PALs: a task-specific low-dimensional attention in parallel with every encoder layer."""
    slots = getattr(encoder, "layer_slots", None)
    if slots is None:
        raise PluginError(f"adapter \"pals\" adds a branch inside every encoder layer, but this encoder "
                          f"({type(encoder).__name__}) has no layer_slots; use encoder \"minbert\", or \"hf\" "
                          "on a model whose layers mtbert finds (not ALBERT's shared ones)")
    chosen = list(tasks) if options.tasks is None else list(options.tasks)
    unknown = [t for t in chosen if t not in tasks]
    if unknown:
        raise PluginError(f"adapter \"pals\": tasks names unknown task(s) {', '.join(map(repr, unknown))}; "
                          f"the spec's tasks are {', '.join(tasks)}")
    hidden = encoder.hidden_size
    size = options.size if options.size is not None else default_size(hidden, options.heads)
    dropout = options.dropout
    if dropout is None:
        dropout = getattr(getattr(encoder, "config", None), "attention_dropout", 0.1)
    pals = Pals(hidden, size, options.heads, len(slots), chosen, dropout, options.activation == "gelu")
    for layer, slot in enumerate(slots):
        slot.append(PalBranch(pals, layer))
    return pals



@hookimpl
def register_adapters(register):
    register("pals", build_pals, options=PalsOptions, declares=Pals)
