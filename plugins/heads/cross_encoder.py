"""Cross-encoder heads: one pooled vector of the (joint) sequence -> a linear layer.

A sentence pair is encoded as ``[CLS] a [SEP] b [SEP]`` with token types
0/1 in one forward pass (the reports' "concat" architecture, which report
000 found far better than encoding each sentence alone: STS 0.87 vs 0.35).

- classifier: ``num_labels`` logits, prediction = argmax (SST-5).
- binary: one logit, prediction = logit > 0 (Quora paraphrase).
- regression: one score, prediction clipped to [low, high] when given (STS-B 0..5).

Every head takes ``mlp``: None (default) keeps one linear layer on the
(dropped-out) pooled vector; a width turns it into the task-specific MLP of
report 002, ``Linear(in, mlp) -> GELU -> Dropout -> Linear(mlp, out)`` (the
inner dropout uses the head's ``dropout``).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor, nn

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Head, LabelSpec, SentenceEmbedding, SequenceClassifier
from mtbert.model.pooling import pool
from mtbert.plugin.structure import at_least, probability

Pooling = Literal["cls", "pooler", "mean"]


def mlp_field():
    """The ``mlp`` option: None for one linear layer, else the hidden width of a 2-layer MLP."""
    return attrs.field(default=None, validator=at_least(1))


def projection(inputs: int, outputs: int, mlp: int | None, dropout: float) -> nn.Module:
    """``Linear(inputs, outputs)``, or with ``mlp`` set
    ``Linear(inputs, mlp) -> GELU -> Dropout(dropout) -> Linear(mlp, outputs)``."""
    if mlp is None:
        return nn.Linear(inputs, outputs)
    return nn.Sequential(nn.Linear(inputs, mlp), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp, outputs))


@attrs.frozen
class ClassifierOptions:
    num_labels: int = attrs.field(validator=at_least(2))
    dropout: float = attrs.field(default=0.1, validator=probability)
    pooling: Pooling = "cls"
    mlp: int | None = mlp_field()


@attrs.frozen
class BinaryOptions:
    dropout: float = attrs.field(default=0.1, validator=probability)
    pooling: Pooling = "cls"
    mlp: int | None = mlp_field()


@attrs.frozen
class RegressionOptions:
    dropout: float = attrs.field(default=0.1, validator=probability)
    pooling: Pooling = "cls"
    mlp: int | None = mlp_field()
    low: float | None = None  # label range: data outside it is refused,
    high: float | None = None  # predictions are clipped to it

    def check(self):
        if (self.low is None) != (self.high is None):
            yield "low", "give both low and high, or neither"
        elif self.low is not None and self.low >= self.high:
            yield "high", f"must be greater than low ({self.low}), got {self.high}"


class LinearHead(Head):
    def __init__(self, options, hidden_size: int, outputs: int):
        super().__init__()
        self.pooling = options.pooling
        self.dropout = nn.Dropout(options.dropout)
        self.linear = projection(hidden_size, outputs, options.mlp, options.dropout)

    def forward(self, encoded) -> Tensor:
        return self.linear(self.dropout(pool(encoded, self.pooling)))

    # the export forms (mtbert/commands/export.py)
    problem_type = "single_label_classification"

    def label_names(self) -> list[str]:
        return [f"LABEL_{i}" for i in range(self.linear.out_features)]

    def as_sequence_classifier(self):
        if not isinstance(self.linear, nn.Linear):
            return (f"the head has an MLP (mlp = {self.linear[0].out_features}): two layers, where "
                    "AutoModelForSequenceClassification has one linear classifier")
        if self.pooling != "pooler":
            return (f"the head reads pooling = \"{self.pooling}\", but BERT's sequence classifier reads the tanh "
                    "pooler; a head trained with pooling = \"pooler\" (on BERT) or head \"own_classifier\" (any "
                    "model type) exports")
        return SequenceClassifier(self.linear, self.problem_type, self.label_names())

    def as_sentence_embedding(self):
        if self.pooling == "pooler":
            return "the head reads BERT's tanh pooler, which sentence-transformers' Pooling has no mode for"
        return SentenceEmbedding(self.pooling)


class Classifier(LinearHead):
    """Multi-class classification: num_labels logits over the pooled vector."""

    output_kind = "multiclass"

    def __init__(self, options: ClassifierOptions, hidden_size: int):
        super().__init__(options, hidden_size, options.num_labels)

    def predict(self, output: Tensor) -> Tensor:
        return output.argmax(-1)


class Binary(LinearHead):
    """Binary classification: one logit over the pooled vector."""

    output_kind = "binary"
    problem_type = "multi_label_classification"  # one logit under BCE: transformers' binary form

    def __init__(self, options: BinaryOptions, hidden_size: int):
        super().__init__(options, hidden_size, 1)

    def forward(self, encoded) -> Tensor:
        return super().forward(encoded).squeeze(-1)

    def predict(self, output: Tensor) -> Tensor:
        return (output > 0).long()


class Regression(LinearHead):
    """Regression: one real score over the pooled vector."""

    output_kind = "regression"
    problem_type = "regression"

    def __init__(self, options: RegressionOptions, hidden_size: int):
        super().__init__(options, hidden_size, 1)
        self.low, self.high = options.low, options.high

    @classmethod
    def labels(cls, config: RegressionOptions) -> LabelSpec:
        return LabelSpec("regression", low=config.low, high=config.high)

    def forward(self, encoded) -> Tensor:
        return super().forward(encoded).squeeze(-1)

    def predict(self, output: Tensor) -> Tensor:
        output = output.float()
        return output if self.low is None else torch.clamp(output, self.low, self.high)


@hookimpl
def register_heads(register):
    register("classifier", Classifier, options=ClassifierOptions)
    register("binary", Binary, options=BinaryOptions)
    register("regression", Regression, options=RegressionOptions)
