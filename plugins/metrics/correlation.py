"""pearson and spearman correlation for regression tasks.

The overall score maps r from [-1, 1] to [0, 1] as (r + 1) / 2, which is the
CS224N course's formula for STS. A constant prediction or label vector has no
defined correlation; it scores 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import LabelSpec, Metric


def pearson(x: Tensor, y: Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (x.norm() * y.norm()).item()
    return (x @ y).item() / denominator if denominator > 0 else 0.0


def ranks(x: Tensor) -> Tensor:
    """Ranks 1..n with ties given their average rank (as Spearman's rho needs)."""
    values, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() - 1) / 2
    return average[inverse]


class Pearson(Metric):
    """Pearson correlation coefficient r."""

    accepts = frozenset({"regression", "similarity"})
    range = (-1.0, 1.0)

    def __init__(self, options, labels: LabelSpec):
        pass

    def __call__(self, predictions: Tensor, labels: Tensor) -> float:
        return pearson(predictions, labels)


class Spearman(Pearson):
    """Spearman rank correlation rho."""

    def __call__(self, predictions: Tensor, labels: Tensor) -> float:
        return pearson(ranks(predictions), ranks(labels))


@hookimpl
def register_metrics(register):
    register("pearson", Pearson)
    register("spearman", Spearman)
