"""minBERT: a BERT encoder in one file, with a slot in every layer for adapters.

Architecture (Devlin et al. 2019): word + position + token-type embeddings,
LayerNorm, then post-LN transformer layers (multi-head self-attention through
``scaled_dot_product_attention``, GELU feed-forward), and a tanh pooler over
[CLS]. ``from_pretrained`` copies Hugging Face BERT weights (safetensors, with
or without the ``bert.`` prefix) into these modules; the parity test in
tests/plugins/test_encoder_parity.py checks the hidden states against
``transformers.BertModel`` to 1e-5.

With ``unpad`` on, the layers work on a batch's real tokens only (see
:class:`Unpadded`): the same function, without the work on padding.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import NamedTuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbert.base.errors import CheckpointError
from mtbert.plugin.interfaces import Encoded, Encoder

try:  # FlashAttention over packed sequences (CUDA, half precision); absent from older torch builds
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - torch < 2.10
    varlen_attn = None


@attrs.frozen
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0

    # Hugging Face config.json key <-> our field
    HF_KEYS = {
        "vocab_size": "vocab_size", "hidden_size": "hidden_size",
        "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
        "intermediate_size": "intermediate_size", "max_position_embeddings": "max_position",
        "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps",
        "hidden_dropout_prob": "hidden_dropout", "attention_probs_dropout_prob": "attention_dropout",
        "pad_token_id": "pad_token_id",
    }

    @classmethod
    def from_hf(cls, data: dict) -> "BertConfig":
        kwargs = {ours: data[theirs] for theirs, ours in cls.HF_KEYS.items() if theirs in data}
        return cls(**kwargs)

    def to_hf(self) -> dict:
        out = {"model_type": "bert", "architectures": ["BertModel"], "hidden_act": "gelu",
               "position_embedding_type": "absolute"}
        out.update({theirs: getattr(self, ours) for theirs, ours in self.HF_KEYS.items()})
        return out


class Unpadded(NamedTuple):  # (a NamedTuple, not attrs: torch.compile traces through its construction)
    """Where a padded [batch, length] batch's real tokens are, to work on them alone.

    ``index`` holds the flat positions (row * length + column) of the tokens
    the attention mask marks, row by row; ``starts`` the cumulative row
    lengths (0, n_0, n_0 + n_1, ...) that variable-length attention reads.
    Finding them waits for the device once (the number of real tokens sets
    the next shapes): the price of not computing on padding.
    """

    index: Tensor  # [tokens] int64
    starts: Tensor  # [batch + 1] int32
    batch: int
    length: int

    @classmethod
    def of(cls, attention_mask: Tensor) -> "Unpadded":
        mask = attention_mask.bool()
        index = mask.flatten().nonzero().squeeze(1)
        starts = F.pad(mask.sum(1, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
        return cls(index, starts, *mask.shape)

    def gather(self, x: Tensor) -> Tensor:
        """[batch, length, ...] -> [tokens, ...]"""
        return x.reshape(self.batch * self.length, *x.shape[2:]).index_select(0, self.index)

    def scatter(self, x: Tensor) -> Tensor:
        """[tokens, ...] -> [batch, length, ...], zeros at the padding."""
        padded = x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy(0, self.index, x)
        return padded.view(self.batch, self.length, *x.shape[1:])


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position = nn.Embedding(c.max_position, c.hidden_size)
        self.token_type = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self._sum(input_ids, positions, token_type_ids)

    def unpadded(self, input_ids: Tensor, token_type_ids: Tensor | None, where: Unpadded) -> Tensor:
        """The real tokens' embeddings, [tokens, hidden]: each the same as in ``forward``'s output."""
        types = None if token_type_ids is None else token_type_ids.flatten().index_select(0, where.index)
        # a token's position is its column, as in forward
        return self._sum(input_ids.flatten().index_select(0, where.index), where.index % where.length, types)

    def _sum(self, ids: Tensor, positions: Tensor, types: Tensor | None) -> Tensor:
        x = self.word(ids) + self.position(positions)
        x = x + (self.token_type.weight[0] if types is None else self.token_type(types))
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention + output projection, residual and LayerNorm."""

    def __init__(self, c: BertConfig):
        super().__init__()
        if c.hidden_size % c.num_heads:
            raise ValueError(f"hidden_size {c.hidden_size} is not a multiple of num_heads {c.num_heads}")
        self.num_heads, self.p = c.num_heads, c.attention_dropout
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.out = nn.Linear(c.hidden_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout)

    def split(self, x: Tensor) -> Tensor:  # [B, T, H] -> [B, heads, T, H/heads]
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, -1).transpose(1, 2)

    def forward(self, h: Tensor, attn_mask: Tensor, unpadded: Unpadded | None = None) -> Tensor:
        if unpadded is None:
            q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                 dropout_p=self.p if self.training else 0.0)
            ctx = ctx.transpose(1, 2).reshape(h.shape)
        else:
            ctx = self.packed_attention(h, attn_mask, unpadded).reshape(h.shape)
        return self.norm(h + self.dropout(self.out(ctx)))

    def packed_attention(self, h: Tensor, attn_mask: Tensor, where: Unpadded) -> Tensor:
        """Attention over the real tokens ``h`` [tokens, hidden] -> [tokens, heads, head size].

        FlashAttention's variable-length kernel where it runs (CUDA, bf16/fp16, head size a multiple
        of 8 up to 256) and where nothing is dropped from the attention weights (it has no dropout):
        evaluation, or attention_dropout = 0. Otherwise the tokens go back to their padded places for
        the same attention as the padded path, and only the projections and the feed-forward skip
        the padding.
        """
        q, k, v = (linear(h).view(h.shape[0], self.num_heads, -1) for linear in (self.query, self.key, self.value))
        dropout = self.p if self.training else 0.0
        if dropout == 0.0 and flash_packs(q):
            return varlen_attn(q, k, v, where.starts, where.starts, where.length, where.length)
        q, k, v = (where.scatter(x).transpose(1, 2) for x in (q, k, v))  # [batch, heads, length, size]
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return where.gather(ctx.transpose(1, 2))


class Layer(nn.Module):
    """One post-LN transformer layer.

    ``slots`` holds parallel branches added by adapters: each is called as
    ``branch(h, a, attn_mask, task)`` with the layer input h, the
    post-attention state a and the [B, 1, 1, T] boolean key mask; a tensor it
    returns is added beside the feed-forward output before the last LayerNorm
    -- exactly where PALs (Stickland & Murray 2019) put theirs -- and None
    means "nothing for this task".
    """

    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = SelfAttention(c)
        self.ffn_in = nn.Linear(c.hidden_size, c.intermediate_size)
        self.ffn_out = nn.Linear(c.intermediate_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout)
        self.slots = nn.ModuleList()

    def forward(self, h: Tensor, attn_mask: Tensor, task: str | None = None,
                unpadded: Unpadded | None = None) -> Tensor:
        a = self.attention(h, attn_mask, unpadded)
        # F.gelu's default is the exact erf form BERT uses, not the tanh approximation.
        z = a + self.dropout(self.ffn_out(F.gelu(self.ffn_in(a))))
        if len(self.slots) and unpadded is not None:  # branches see the padded batch, as they always do
            h, a = unpadded.scatter(h), unpadded.scatter(a)
        for branch in self.slots:
            extra = branch(h, a, attn_mask, task)
            if extra is not None:
                z = z + (extra if unpadded is None else unpadded.gather(extra))
        return self.norm(z)


def flash_packs(q: Tensor) -> bool:
    """Whether FlashAttention's variable-length kernel takes these packed queries [tokens, heads, size]."""
    return (varlen_attn is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256 and _flash_device(q.device.index or 0))


@functools.lru_cache(maxsize=None)
def _flash_device(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)  # FlashAttention 2 needs Ampere or later


class MinBert(Encoder):
    def __init__(self, config: BertConfig, tokenizer=None, unpad: bool = False):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        # Work on the real tokens only (not under export: a traced graph keeps the padded shapes).
        self.unpad = unpad
        self.hidden_size = config.hidden_size
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.apply(self._init_weights)

    @property
    def layer_slots(self) -> list[nn.ModuleList]:
        return [layer.slots for layer in self.layers]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        return self.embeddings(input_ids, token_type_ids)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                *, task: str | None = None, inputs_embeds: Tensor | None = None) -> Encoded:
        # [B, 1, 1, T] boolean: True where a key may be attended to.
        attn_mask = attention_mask[:, None, None, :].bool()
        if self.unpad and not torch.compiler.is_exporting() and not torch.jit.is_tracing():
            return self._forward_unpadded(input_ids, attention_mask, attn_mask, token_type_ids, task, inputs_embeds)
        h = self.embed(input_ids, token_type_ids) if inputs_embeds is None else inputs_embeds
        for layer in self.layers:
            h = layer(h, attn_mask, task)
        pooled = torch.tanh(self.pooler(h[:, 0]))
        return Encoded(h, attention_mask, pooled)

    def _forward_unpadded(self, input_ids, attention_mask, attn_mask, token_type_ids, task, inputs_embeds):
        """The same as the padded forward on the real tokens, with zeros at the padding (which every
        reader of Encoded.states masks out). Padding is on the right: [CLS] stays at column 0."""
        where = Unpadded.of(attention_mask)
        if inputs_embeds is None:
            h = self.embeddings.unpadded(input_ids, token_type_ids, where)
        else:
            h = where.gather(inputs_embeds)
        for layer in self.layers:
            h = layer(h, attn_mask, task, where)
        states = where.scatter(h)
        pooled = torch.tanh(self.pooler(states[:, 0]))
        return Encoded(states, attention_mask, pooled)

    def save_architecture(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config.to_hf(), indent=2))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))

    def save_hf(self, directory: Path) -> str:
        """Write the weights (Hugging Face names) and config.json of a plain ``BertModel``; returns
        its model_type. Tensors without a BERT name (an unmerged adapter) are refused."""
        from safetensors.torch import save_file

        tensors = {}
        for name, tensor in self.state_dict().items():
            try:
                hf_name = ours_to_hf(name)
            except KeyError:
                raise CheckpointError(f"encoder tensor {name} has no Hugging Face BERT name; this encoder "
                                      "holds more than a plain BERT and cannot be exported") from None
            tensors[hf_name] = tensor.detach().to("cpu").contiguous()
        save_file(tensors, str(Path(directory) / "model.safetensors"), metadata={"format": "pt"})
        config = self.config.to_hf()
        (Path(directory) / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return config["model_type"]


# -- Hugging Face parameter names <-> ours ----------------------------------------------
_LAYER_MAP = [
    (r"attention\.self\.(query|key|value)\.", r"attention.\1."),
    (r"attention\.output\.dense\.", "attention.out."),
    (r"attention\.output\.LayerNorm\.", "attention.norm."),
    (r"intermediate\.dense\.", "ffn_in."),
    (r"output\.dense\.", "ffn_out."),
    (r"output\.LayerNorm\.", "norm."),
]
_TOP_MAP = {
    "embeddings.word_embeddings.": "embeddings.word.",
    "embeddings.position_embeddings.": "embeddings.position.",
    "embeddings.token_type_embeddings.": "embeddings.token_type.",
    "embeddings.LayerNorm.": "embeddings.norm.",
    "pooler.dense.": "pooler.",
}


def hf_to_ours(name: str) -> str | None:
    """Map a Hugging Face BERT parameter name to ours; None if it is not an encoder weight."""
    name = name.removeprefix("bert.")
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)  # old TF-converted checkpoints
    name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    for theirs, ours in _TOP_MAP.items():
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    m = re.match(r"encoder\.layer\.(\d+)\.(.*)$", name)
    if m:
        for pattern, repl in _LAYER_MAP:
            rest, n = re.subn("^" + pattern, repl, m.group(2))
            if n:
                return f"layers.{m.group(1)}.{rest}"
    return None


def ours_to_hf(name: str) -> str:
    """Inverse of :func:`hf_to_ours` (used to export in Hugging Face format)."""
    for theirs, ours in _TOP_MAP.items():
        if name.startswith(ours):
            return theirs + name[len(ours):]
    m = re.match(r"layers\.(\d+)\.(.*)$", name)
    if not m:
        raise KeyError(name)
    rest = m.group(2)
    for hf, ours in [("attention.self.query.", "attention.query."), ("attention.self.key.", "attention.key."),
                     ("attention.self.value.", "attention.value."), ("attention.output.dense.", "attention.out."),
                     ("attention.output.LayerNorm.", "attention.norm."), ("intermediate.dense.", "ffn_in."),
                     ("output.dense.", "ffn_out."), ("output.LayerNorm.", "norm.")]:
        if rest.startswith(ours):
            return f"encoder.layer.{m.group(1)}.{hf}{rest[len(ours):]}"
    raise KeyError(name)


def load_hf_weights(model: MinBert, tensors: dict[str, Tensor], source: str) -> list[str]:
    """Copy Hugging Face BERT tensors into ``model``; returns the names it ignored.

    Refuses (CheckpointError) a tensor whose shape does not fit, naming the
    tensor and both shapes, and a checkpoint missing encoder weights.
    """
    own = model.state_dict()
    mapped, ignored, problems = {}, [], []
    for name, tensor in tensors.items():
        ours = hf_to_ours(name)
        if name.endswith("position_ids"):  # a buffer of positions 0..511, not a weight
            continue
        if ours is None or ours not in own:
            ignored.append(name)
            continue
        if tuple(tensor.shape) != tuple(own[ours].shape):
            problems.append(f"{name}: checkpoint has shape {tuple(tensor.shape)}, "
                            f"the model expects {tuple(own[ours].shape)}")
            continue
        mapped[ours] = tensor
    missing = [k for k in own if k not in mapped and not k.startswith("pooler.") and ".slots." not in k]
    if missing:
        problems.append(f"missing encoder weights: {', '.join(missing[:8])}"
                        + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    if problems:
        raise CheckpointError(f"{source} does not fit this BERT encoder:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for name, tensor in mapped.items():
            own[name].copy_(tensor)
    return ignored

