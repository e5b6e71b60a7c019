"""cosine_mse: the Sentence-BERT regression objective (Reimers & Gurevych 2019, "Sentence-BERT").

    L = mean_k (cos(u_k, v_k) - y_k / high)^2

The head outputs the cosine of the two sentence vectors (a "similarity"
head such as ``cosine``); the labels, in [low, high] (STS-B: 0..5), are
scaled by 1 / high onto the cosine's range, matching the head's prediction
``high * cos``. ``high`` comes from the task's LabelSpec.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mtbert.base.errors import PluginError
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import LabelSpec, Loss


class CosineMSE(Loss):
    """MSE between cos(u, v) and label / high (Sentence-BERT; similarity heads)."""

    accepts = frozenset({"similarity"})

    def __init__(self, options, labels: LabelSpec | None = None):
        if labels is None or labels.high is None:
            raise PluginError("loss \"cosine_mse\" scales the labels by 1 / high, but the head gives no label "
                              "range; use a similarity head with high set (e.g. head = { name = \"cosine\", "
                              "high = 5.0 })")
        self.high = float(labels.high)

    def __call__(self, output: Tensor, labels: Tensor) -> Tensor:
        return F.mse_loss(output.float(), labels.float() / self.high)


@hookimpl
def register_losses(register):
    register("cosine_mse", CosineMSE)
