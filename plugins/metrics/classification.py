"""accuracy and f1 for classification tasks.

f1 is macro-averaged over the classes for multi-class tasks (each class's
F1 = 2PR / (P + R), then the plain mean) and the positive class's F1 for
binary ones. A class never predicted and never present is left out of the
macro mean; one with P + R = 0 otherwise counts as 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import LabelSpec, Metric


class Accuracy(Metric):
    """Fraction of predictions equal to the label."""

    accepts = frozenset({"multiclass", "binary"})
    range = (0.0, 1.0)

    def __init__(self, options, labels: LabelSpec):
        pass

    def __call__(self, predictions: Tensor, labels: Tensor) -> float:
        return (predictions == labels).double().mean().item()


class F1(Metric):
    """F1: macro over classes (multi-class) or of the positive class (binary)."""

    accepts = frozenset({"multiclass", "binary"})
    range = (0.0, 1.0)

    def __init__(self, options, labels: LabelSpec):
        self.binary = labels.kind == "binary"
        self.num_classes = 2 if self.binary else labels.num_labels

    def __call__(self, predictions: Tensor, labels: Tensor) -> float:
        classes = [1] if self.binary else range(self.num_classes)
        scores = []
        for c in classes:
            predicted, actual = predictions == c, labels == c
            tp = (predicted & actual).sum().item()
            fp = (predicted & ~actual).sum().item()
            fn = (~predicted & actual).sum().item()
            if tp + fp + fn == 0:
                continue
            scores.append(2 * tp / (2 * tp + fp + fn))
        return float(torch.tensor(scores, dtype=torch.float64).mean()) if scores else 0.0


@hookimpl
def register_metrics(register):
    register("accuracy", Accuracy)
    register("f1", F1)
