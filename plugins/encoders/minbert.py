"""minbert: our own BERT (mtbert/toolkit/bert.py) loaded from a Hugging Face checkpoint.

Options select the checkpoint (``pretrained``: 'minilm-l6', a directory or a
hub id) and can override dropout. ``init = "random"`` keeps the checkpoint's
architecture and tokenizer but starts from random weights, optionally resized
(``num_layers`` ...): that is how tests get a tiny encoder.

``unpad = true`` runs the layers on each batch's real tokens only
(mtbert.toolkit.bert.Unpadded): the same outputs without the work on
padding, through FlashAttention's variable-length kernel on a GPU where
attention has no dropout (evaluation, or attention_dropout = 0). Off by
default until a GPU measures it (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import attrs

from mtbert.toolkit import pretrained
from mtbert.toolkit.bert import BertConfig, MinBert, load_hf_weights
from mtbert.base.errors import CheckpointError
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.structure import at_least, probability

log = logging.getLogger(__name__)
SIZE_FIELDS = ("num_layers", "hidden_size", "num_heads", "intermediate_size")


@attrs.frozen
class MinBertOptions:
    pretrained: str = "minilm-l6"  # "minilm-l6" (embedded), a checkpoint directory or a hub id
    init: Literal["pretrained", "random"] = "pretrained"  # "random": the checkpoint's shape and tokenizer, random weights
    num_layers: int | None = attrs.field(default=None, validator=at_least(1))  # with init = "random"
    hidden_size: int | None = attrs.field(default=None, validator=at_least(1))  # with init = "random"
    num_heads: int | None = attrs.field(default=None, validator=at_least(1))  # with init = "random"
    intermediate_size: int | None = attrs.field(default=None, validator=at_least(1))  # with init = "random"
    dropout: float | None = attrs.field(default=None, validator=probability)  # default: the checkpoint's
    attention_dropout: float | None = attrs.field(default=None, validator=probability)  # default: the checkpoint's
    unpad: bool = False  # run the layers on real tokens only (same outputs, no work on padding); see docs/benchmarks.md

    def check(self):
        sizes = [f for f in SIZE_FIELDS if getattr(self, f) is not None]
        if sizes and self.init == "pretrained":
            yield sizes[0], 'size overrides need init = "random" (pretrained weights fix the sizes)'
        if self.hidden_size and self.num_heads and self.hidden_size % self.num_heads:
            yield "num_heads", f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"


def _architecture(options: MinBertOptions, hf_config: dict) -> BertConfig:
    model_type = hf_config.get("model_type", "bert")
    if model_type != "bert":
        raise CheckpointError(f"minbert loads BERT checkpoints, this one is model_type '{model_type}'")
    config = BertConfig.from_hf(hf_config)
    overrides = {f: getattr(options, f) for f in SIZE_FIELDS if getattr(options, f) is not None}
    if options.dropout is not None:
        overrides["hidden_dropout"] = options.dropout
    if options.attention_dropout is not None:
        overrides["attention_dropout"] = options.attention_dropout
    return attrs.evolve(config, **overrides)


class MinBertEncoder(MinBert):
    """Our BERT as this plugin's encoder: what it offers, declared once."""

    has_layer_slots = True  # PALs and other per-layer adapters can plug in
    input_embeddings = True  # embed(): word + position + token-type embeddings, normalized
    hf_export = True  # save_hf(): a plain transformers BertModel
    has_pooler = True  # BERT's tanh pooler (pooling = "pooler")
    has_layers = True  # one layer module per depth (trainable = "last_layers")
    attention_projections = ["query", "value"]  # what LoRA adapts by default
    query_value = ["query", "value"]

    @staticmethod
    def positions(options: MinBertOptions) -> int | None:
        """The checkpoint's position table, when it is here (validation checks data.max_length)."""
        return pretrained.local_positions(options.pretrained)


def build_minbert(options: MinBertOptions, *, restore: Path | None = None) -> MinBert:
    """Our own BERT in one file, loaded from Hugging Face safetensors."""
    source = Path(restore) if restore is not None else pretrained.resolve(options.pretrained)
    hf_config = pretrained.read_config(source)
    model = MinBertEncoder(_architecture(options, hf_config), pretrained.load_tokenizer(source), unpad=options.unpad)
    if restore is None and options.init == "pretrained":
        ignored = load_hf_weights(model, pretrained.read_safetensors(source), str(source))
        if ignored:
            log.info("ignored %d non-encoder tensors in %s (e.g. %s)", len(ignored), source, ignored[0])
    # what the weights started from, for model cards (none for a random initialisation)
    model.base_model = pretrained.hub_name(options.pretrained) if options.init == "pretrained" else None
    return model


@hookimpl
def register_encoders(register):
    register("minbert", build_minbert, options=MinBertOptions, declares=MinBertEncoder)
