"""lora: Low-Rank Adaptation, Hu et al. (2021), "LoRA: Low-Rank Adaptation of
Large Language Models" (arXiv:2106.09685).

Each chosen linear layer W (out x in) of the encoder is replaced by

    y = W x + b + (alpha / r) * B A dropout(x)

with A (r x in) drawn from N(0, init_std^2) and B (out x r) zero, so the
wrapped encoder starts as the original one (section 4.1 of the paper: random
Gaussian A, zero B, the update scaled by alpha / r). Following the paper's
default, ``targets`` are the attention's query and value projections. The
low-rank factors are shared by all tasks; freeze the encoder with
``trainable = "adapters"`` to train only them (and the heads), or train
everything with ``trainable = "all"``.

A linear is chosen when its qualified module name is one of ``targets`` or
ends with ``"." + target`` (so "value" matches ``layers.0.attention.value``
in minbert and ``encoder.layer.0.attention.self.value`` in a Hugging Face
BERT, but not ``xvalue``); this works on any encoder by walking its modules.

The wrapper keeps the original ``weight`` and ``bias`` parameters under their
own names, so the encoder's state dict keys do not change (pretrained and
exported weights still map). The factors A, B live only in the returned
module, which the wrappers reference without registering, so each tensor is
saved once.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbert.base.errors import PluginError
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.structure import at_least, greater_than, non_empty, probability


@attrs.frozen
class LoraOptions:
    r: int = attrs.field(default=8, validator=at_least(1))
    alpha: float = attrs.field(default=16.0, validator=greater_than(0.0))
    dropout: float = attrs.field(default=0.0, validator=probability)
    # None: the attention's query and value projections, by the encoder's model type
    targets: list[str] | None = attrs.field(default=None, validator=non_empty)
    init_std: float = attrs.field(default=0.02, validator=greater_than(0.0))


class LoraFactors(nn.Module):
    """A (r x in) and B (out x r) of one wrapped linear, with the input dropout."""

    def __init__(self, in_features: int, out_features: int, r: int, init_std: float, dropout: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(r, in_features).normal_(0.0, init_std))
        self.B = nn.Parameter(torch.empty(out_features, r).zero_())
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # B A dropout(x)
        return F.linear(F.linear(self.dropout(x), self.A), self.B)


class LoraLinear(nn.Module):
    """W x + b + scale * B A dropout(x); W, b are the wrapped linear's own parameters."""

    def __init__(self, base: nn.Linear, factors: LoraFactors, scale: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.scale = scale
        self.__dict__["factors"] = factors  # registered in the adapter module only

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias) + self.scale * self.factors(x)

    def extra_repr(self) -> str:
        r = self.factors.A.shape[0]
        return f"in_features={self.in_features}, out_features={self.out_features}, r={r}, scale={self.scale}"


class Lora(nn.Module):
    """The LoRA factors of every wrapped linear, by module name ('.' written '-')."""

    mergeable = True  # merge() folds it into the encoder's weights (mtbert export)

    @staticmethod
    def needs_attention_projections(options: LoraOptions) -> bool:
        """Without targets it adapts the encoder's query and value projections: validation checks the
        encoder's model type has known ones."""
        return options.targets is None

    def __init__(self, factors: dict[str, LoraFactors], scale: float):
        super().__init__()
        self.wrapped = list(factors)  # the encoder's module names, in order
        self.factors = nn.ModuleDict({name.replace(".", "-"): part for name, part in factors.items()})
        self.scale = scale

    @torch.no_grad()
    def merge(self, encoder: nn.Module) -> str:
        """Fold every update into its linear: W <- W + scale B A, a plain nn.Linear again.

        The encoder then computes the same function (in eval mode) with no
        adapter, which is what exporting it as a plain model needs."""
        for name in self.wrapped:
            wrapped = encoder.get_submodule(name)
            part = self.factors[name.replace(".", "-")]
            merged = nn.Linear(wrapped.in_features, wrapped.out_features, bias=wrapped.bias is not None,
                               device=wrapped.weight.device, dtype=wrapped.weight.dtype)
            delta = (part.B.double() @ part.A.double()) * self.scale
            merged.weight.copy_((wrapped.weight.double() + delta).to(wrapped.weight.dtype))
            if wrapped.bias is not None:
                merged.bias.copy_(wrapped.bias)
            parent_name, _, child = name.rpartition(".")
            parent = encoder.get_submodule(parent_name) if parent_name else encoder
            setattr(parent, child, merged)
        return (f"LoRA merged into the weights of {len(self.wrapped)} linear layer(s): W + (alpha/r) B A with "
                f"alpha/r = {self.scale:g}")


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def build_lora(options: LoraOptions, encoder: nn.Module, tasks: list[str]) -> Lora:
    """LoRA: low-rank updates B A added to chosen linears of the encoder (query, value)."""
    linears = [(n, m) for n, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    # the encoder's own names for its query and value projections (BERT's on a module that says nothing)
    targets = options.targets or getattr(encoder, "query_value", ["query", "value"])
    if not targets:
        raise PluginError(f"adapter \"lora\": mtbert does not know the attention projections of this encoder "
                          f"({type(encoder).__name__}); name the linear layers to adapt with targets = [...]")
    chosen = [(n, m) for n, m in linears if _matches(n, targets)]
    if not chosen:
        names = [n for n, _ in linears]
        some = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise PluginError(f"adapter \"lora\": no linear layer of the encoder matches targets "
                          f"{', '.join(map(repr, targets))}; its linear layers are: {some or 'none'}")
    scale = options.alpha / options.r
    factors = {}
    for name, linear in chosen:
        part = LoraFactors(linear.in_features, linear.out_features, options.r, options.init_std, options.dropout)
        part.to(device=linear.weight.device, dtype=linear.weight.dtype)
        factors[name] = part
        parent_name, _, child = name.rpartition(".")
        parent = encoder.get_submodule(parent_name) if parent_name else encoder
        setattr(parent, child, LoraLinear(linear, part, scale))
    return Lora(factors, scale)



@hookimpl
def register_adapters(register):
    register("lora", build_lora, options=LoraOptions, declares=Lora)
