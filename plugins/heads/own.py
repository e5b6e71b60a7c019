"""own_classifier: the encoder's model type's own sequence-classification head, as transformers builds it.

For people who serve with ``pipeline("text-classification")`` or ``CrossEncoder``:
the head is the top of the model type's ``AutoModelForSequenceClassification``
(RoBERTa's dense -> tanh -> out_proj on ``<s>``, DeBERTa's context pooler,
DistilBERT's pre-classifier, ModernBERT's head with its own pooling, BERT's
pooler -> linear ...), built by transformers itself from the encoder's config
and called through that class's own forward, with the encoder's states handed
in. So ``mtbert export --format transformers`` writes the model type's own
class, and transformers gives exactly mtbert's outputs, for any encoder
transformers has such a class for.

- ``outputs = "multiclass"`` (``num_labels`` logits, argmax), ``"binary"`` (one
  logit, > 0) or ``"regression"`` (one score, clipped to [low, high] when given).
- ``dropout``: the classifier dropout (default: what the model's config says).
"""

from __future__ import annotations

import copy
from typing import Literal

import attrs
import torch
from torch import Tensor, nn

from mtbert.base.errors import PluginError
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Head, LabelSpec, SequenceClassifier
from mtbert.plugin.structure import at_least, probability

PROBLEM = {"multiclass": "single_label_classification", "binary": "multi_label_classification",
           "regression": "regression"}


@attrs.frozen
class OwnOptions:
    outputs: Literal["multiclass", "binary", "regression"] = "multiclass"
    num_labels: int | None = attrs.field(default=None, validator=at_least(2))  # multiclass only
    dropout: float | None = attrs.field(default=None, validator=probability)
    low: float | None = None  # regression: the label range (data outside refused, predictions clipped)
    high: float | None = None

    def check(self):
        if self.outputs == "multiclass" and self.num_labels is None:
            yield "num_labels", 'outputs = "multiclass" needs num_labels (2 or more)'
        if self.outputs != "multiclass" and self.num_labels is not None:
            yield "num_labels", f'outputs = "{self.outputs}" has one output; remove num_labels'
        if (self.low is None) != (self.high is None):
            yield "low", "give both low and high, or neither"
        elif self.low is not None and self.low >= self.high:
            yield "high", f"must be greater than low ({self.low}), got {self.high}"


class _Given(nn.Module):
    """Stands in for the classification model's base model: returns the encoder's states it is given."""

    def __init__(self, parts: nn.ModuleDict):
        super().__init__()
        self.encoded = None
        self.__dict__["parts"] = parts  # not a child: the head owns them

    def forward(self, *args, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        states, _, pooled = self.encoded
        if pooled is None and "pooler" in self.parts:  # the class's pooler over the encoder's states
            pooled = self.parts["pooler"](states)
        return BaseModelOutputWithPooling(last_hidden_state=states, pooler_output=pooled)


def hf_config(encoder):
    """The encoder's transformers config: an ``hf`` encoder's own, or a BERT config for minbert."""
    model = getattr(encoder, "model", None)
    if model is not None and hasattr(model, "config"):
        return copy.deepcopy(model.config)
    to_hf = getattr(getattr(encoder, "config", None), "to_hf", None)
    if to_hf is None:
        raise PluginError(f"head \"own_classifier\": encoder {type(encoder).__name__} has no transformers "
                          "config to take the classification head from; use \"classifier\"")
    from transformers import BertConfig

    return BertConfig(**to_hf())


def parts_the_encoder_lacks(base: nn.Module, encoder) -> dict[str, nn.Module]:
    """The class's base-model parts that the encoder was built without: GTE's and Nomic's classifiers
    build their base model with a pooler, the plain model (mtbert's encoder) has none. They train with
    the head and export under the base model's prefix."""
    model = getattr(encoder, "model", None)
    if model is None or not hasattr(model, "config"):  # minbert: a whole BERT, pooler included
        return {}
    have = {name for name, module in model.named_children() if module is not None}
    return {name: module for name, module in base.named_children()
            if name not in have and any(True for _ in module.parameters())}


class OwnClassifier(Head):
    needs_encoder = True  # built from the encoder's config (mtbert/model/build.py hands it over)

    def __init__(self, options: OwnOptions, hidden_size: int, *, encoder):
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        self.kind, self.low, self.high = options.outputs, options.low, options.high
        self.output_kind = options.outputs
        config = hf_config(encoder)
        config.num_labels = options.num_labels if options.outputs == "multiclass" else 1
        config.problem_type = PROBLEM[options.outputs]
        if options.dropout is not None:
            for key in ("classifier_dropout", "seq_classif_dropout", "classifier_dropout_prob"):
                if hasattr(config, key):
                    setattr(config, key, options.dropout)
        try:  # the whole class, initialised as transformers does; its base model is dropped below
            full = AutoModelForSequenceClassification.from_config(config)
        except (ValueError, KeyError) as exc:
            raise PluginError(f"head \"own_classifier\": transformers has no sequence-classification model for "
                              f"model type {config.model_type!r} ({exc}); use \"classifier\"") from None
        prefix = full.base_model_prefix
        base = getattr(full, prefix)
        self.base_parts = nn.ModuleDict(parts_the_encoder_lacks(base, encoder))
        self.base_keys = frozenset(base.state_dict())  # what the class keeps of a base model
        top = {name: module for name, module in full.named_children() if name != prefix}
        self.top = nn.ModuleDict(top)  # the head's parameters, under the class's own names
        setattr(full, prefix, _Given(self.base_parts))
        self.__dict__["full"] = full  # not a child: its top is self.top, its base the encoder's states
        self.prefix, self.architecture = prefix, type(full).__name__
        self.label_count = config.num_labels

    def forward(self, encoded) -> Tensor:
        given = getattr(self.full, self.prefix)
        given.encoded = encoded
        try:
            logits = self.full(attention_mask=encoded.mask).logits
        finally:
            given.encoded = None
        return logits if self.kind == "multiclass" else logits.squeeze(-1)

    @classmethod
    def labels(cls, config: OwnOptions) -> LabelSpec:
        if config.outputs == "regression":
            return LabelSpec("regression", low=config.low, high=config.high)
        return LabelSpec(config.outputs, config.num_labels)

    def predict(self, output: Tensor) -> Tensor:
        if self.kind == "multiclass":
            return output.argmax(-1)
        if self.kind == "binary":
            return (output > 0).long()
        output = output.float()
        return output if self.low is None else torch.clamp(output, self.low, self.high)

    def as_sequence_classifier(self):
        names = [f"LABEL_{i}" for i in range(self.label_count)]
        weights = {name: t.detach().cpu().contiguous() for name, t in self.top.state_dict().items()}
        weights.update({f"{self.prefix}.{name}": t.detach().cpu().contiguous()
                        for name, t in self.base_parts.state_dict().items()})
        return SequenceClassifier(None, PROBLEM[self.kind], names, top=weights, architecture=self.architecture,
                                  prefix=self.prefix, base_keys=self.base_keys)

    def as_sentence_embedding(self):
        return "the head is a classifier over the model's own pooling; export the encoder, or use a cls/mean head"


@hookimpl
def register_heads(register):
    register("own_classifier", OwnClassifier, options=OwnOptions)
