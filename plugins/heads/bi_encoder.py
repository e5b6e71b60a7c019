"""Bi-encoder heads (Sentence-BERT; Reimers & Gurevych 2019, "Sentence-BERT").

Each sentence of a pair is encoded alone by the shared encoder (the
reports' "parallel" architecture; ``pair_encoding = "bi"``) and pooled to a
sentence vector: u for the first, v for the second (``pooling``, default
"mean" as Sentence-BERT and the MiniLM sentence-transformers checkpoints use).

- bi_classifier: ``num_labels`` logits from a linear layer on the features
  ``[u, v, |u - v|, u * v]`` (4 x hidden), with dropout; prediction = argmax.
- bi_binary: one logit from the same features; prediction = logit > 0.
- cosine: s = cos(u, v).
  * ``output = "cosine"`` (default): the head outputs s itself (output kind
    "similarity", to train with cosine_mse, cosent or pearson); predictions
    map it onto the label range as ``clamp(high * s, low, high)`` (STS-B:
    ``5 * cos`` clipped to [0, 5]).
  * ``output = "affine"``: the head outputs ``a * s + b`` with a learned
    scale a (initialised to ``high``) and shift b (initialised to 0); output
    kind "regression" (train with mse, pearson, ...); predictions are clipped
    to [low, high].

``mlp`` (None by default) works as in the cross-encoder heads: for the
classifiers the linear layer becomes ``Linear(4h, mlp) -> GELU -> Dropout ->
Linear(mlp, out)``; for the cosine head, which has no output layer, both
sentence vectors pass through one shared ``Linear(h, mlp) -> GELU -> Dropout
-> Linear(mlp, h)`` before the cosine (a task-specific projection).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Encoded, Head, LabelSpec, SentenceEmbedding
from mtbert.model.pooling import pool
from mtbert.plugin.structure import at_least, probability

from mtbert_plugins.heads.cross_encoder import Pooling, mlp_field, projection


@attrs.frozen
class BiClassifierOptions:
    num_labels: int = attrs.field(validator=at_least(2))
    dropout: float = attrs.field(default=0.1, validator=probability)
    pooling: Pooling = "mean"
    mlp: int | None = mlp_field()


@attrs.frozen
class BiBinaryOptions:
    dropout: float = attrs.field(default=0.1, validator=probability)
    pooling: Pooling = "mean"
    mlp: int | None = mlp_field()


@attrs.frozen
class CosineOptions:
    high: float  # label range [low, high]: STS-B is 0..5
    low: float = 0.0
    output: Literal["cosine", "affine"] = "cosine"
    pooling: Pooling = "mean"
    # Sentence-BERT applies no dropout to u, v before the cosine; the option
    # exists for the mlp projection (and is applied to u, v when set).
    dropout: float = attrs.field(default=0.0, validator=probability)
    mlp: int | None = mlp_field()

    def check(self):
        if self.low >= self.high:
            yield "high", f"must be greater than low ({self.low}), got {self.high}"


def sentence_vectors(encoded, pooling: str, head: str) -> tuple[Tensor, Tensor]:
    """The pooled vectors (u, v) of a bi-encoded pair."""
    if isinstance(encoded, Encoded) or not (isinstance(encoded, (tuple, list)) and len(encoded) == 2):
        raise ValueError(f"head \"{head}\" is a bi-encoder head: it needs each sentence of a pair encoded "
                         "alone (a tuple of two Encoded), but got one encoded sequence; does the task "
                         "have data.text_pair?")
    first, second = encoded
    return pool(first, pooling), pool(second, pooling)


def pair_features(u: Tensor, v: Tensor) -> Tensor:
    """Sentence-BERT's classification features ``[u, v, |u - v|, u * v]`` -> [batch, 4 * hidden]."""
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


class PairFeatureHead(Head):
    pair_encoding = "bi"
    head_name = "bi"

    def __init__(self, options, hidden_size: int, outputs: int):
        super().__init__()
        self.pooling = options.pooling
        self.dropout = nn.Dropout(options.dropout)
        self.linear = projection(4 * hidden_size, outputs, options.mlp, options.dropout)

    def forward(self, encoded) -> Tensor:
        u, v = sentence_vectors(encoded, self.pooling, self.head_name)
        return self.linear(self.dropout(pair_features(u, v)))

    def as_sequence_classifier(self):
        return ("a bi-encoder head classifies [u, v, |u - v|, u * v] of two sentences encoded apart; "
                "AutoModelForSequenceClassification encodes one joint sequence")

    def as_sentence_embedding(self):
        if self.pooling == "pooler":
            return "the head reads BERT's tanh pooler, which sentence-transformers' Pooling has no mode for"
        return SentenceEmbedding(self.pooling)


class BiClassifier(PairFeatureHead):
    """Sentence-pair classification (bi-encoder): num_labels logits on [u, v, |u-v|, u*v]."""

    output_kind = "multiclass"
    head_name = "bi_classifier"

    def __init__(self, options: BiClassifierOptions, hidden_size: int):
        super().__init__(options, hidden_size, options.num_labels)

    def predict(self, output: Tensor) -> Tensor:
        return output.argmax(-1)


class BiBinary(PairFeatureHead):
    """Binary sentence-pair classification (bi-encoder): one logit on [u, v, |u-v|, u*v]."""

    output_kind = "binary"
    head_name = "bi_binary"

    def __init__(self, options: BiBinaryOptions, hidden_size: int):
        super().__init__(options, hidden_size, 1)

    def forward(self, encoded) -> Tensor:
        return super().forward(encoded).squeeze(-1)

    def predict(self, output: Tensor) -> Tensor:
        return (output > 0).long()


class Cosine(Head):
    """Similarity (bi-encoder): cos(u, v), mapped to [low, high] by high * cos or a learned affine map."""

    pair_encoding = "bi"
    output_kind = "similarity"  # with output = "affine": "regression" (set per instance)

    def __init__(self, options: CosineOptions, hidden_size: int):
        super().__init__()
        self.pooling = options.pooling
        self.low, self.high = options.low, options.high
        self.affine = options.output == "affine"
        self.output_kind = self.kind(options)
        self.dropout = nn.Dropout(options.dropout)
        self.projection = (None if options.mlp is None
                           else projection(hidden_size, hidden_size, options.mlp, options.dropout))
        if self.affine:
            self.scale = nn.Parameter(torch.tensor(float(options.high)))
            self.bias = nn.Parameter(torch.tensor(0.0))

    @staticmethod
    def kind(options: CosineOptions) -> str:
        return "regression" if options.output == "affine" else "similarity"

    @classmethod
    def labels(cls, config: CosineOptions) -> LabelSpec:
        return LabelSpec(cls.kind(config), low=config.low, high=config.high)

    def forward(self, encoded) -> Tensor:
        u, v = sentence_vectors(encoded, self.pooling, "cosine")
        u, v = self.dropout(u), self.dropout(v)
        if self.projection is not None:
            u, v = self.projection(u), self.projection(v)
        cosine = F.cosine_similarity(u.float(), v.float(), dim=-1)
        return self.scale * cosine + self.bias if self.affine else cosine

    def as_sequence_classifier(self):
        return ("the cosine head compares two sentences encoded apart; AutoModelForSequenceClassification "
                "encodes one joint sequence")

    def as_sentence_embedding(self):
        if self.projection is not None:
            return "the head projects the sentence vectors through its MLP (mlp = ...) before the cosine"
        if self.pooling == "pooler":
            return "the head reads BERT's tanh pooler, which sentence-transformers' Pooling has no mode for"
        if self.affine:
            meaning = (f"mtbert's score for a pair is {self.scale.item():.4g} x cos(u, v) + {self.bias.item():.4g} "
                       f"(learned), clipped to [{self.low:g}, {self.high:g}]")
        else:
            meaning = f"mtbert's score for a pair is {self.high:g} x cos(u, v), clipped to [{self.low:g}, {self.high:g}]"
        return SentenceEmbedding(self.pooling, normalize=True, meaning=meaning)  # the cosine: a dot of unit vectors

    def predict(self, output: Tensor) -> Tensor:
        output = output.float()
        if not self.affine:
            output = self.high * output
        return torch.clamp(output, self.low, self.high)


@hookimpl
def register_heads(register):
    register("bi_classifier", BiClassifier, options=BiClassifierOptions)
    register("bi_binary", BiBinary, options=BiBinaryOptions)
    register("cosine", Cosine, options=CosineOptions)
