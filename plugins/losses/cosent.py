"""cosent: the CoSENT ranking loss (Su 2022; Huang et al. 2024, "CoSENT: Consistent
Sentence Embedding via Similarity Ranking"; cited by report 000).

    L = log(1 + sum_{(i, j): y_i > y_j} exp(lambda * (s_j - s_i)))

over all ordered pairs of examples in the batch, s the head's output (the
cosine of a similarity head) and lambda the ``scale`` option (20 as in the
paper). Only the ranking of the scores is trained: every pair whose labels
say i is more similar than j is penalised when s_j comes close to or above
s_i; pairs with equal labels contribute nothing. lambda = 20 assumes the
scores are cosines in [-1, 1]; with a "regression" head (e.g. the cosine
head's affine output, in label units) choose a smaller scale.
Computed stably as logsumexp over [0] + [lambda * (s_j - s_i) for the valid pairs].
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Loss
from mtbert.plugin.structure import greater_than


@attrs.frozen
class CosentOptions:
    scale: float = attrs.field(default=20.0, validator=greater_than(0.0))  # lambda


class CoSENT(Loss):
    """CoSENT: log(1 + sum over pairs with y_i > y_j of exp(lambda (s_j - s_i))) (real-valued tasks)."""

    accepts = frozenset({"similarity", "regression"})

    def __init__(self, options: CosentOptions, labels=None):
        self.scale = options.scale

    def __call__(self, output: Tensor, labels: Tensor) -> Tensor:
        s, y = output.float().reshape(-1), labels.float().reshape(-1)
        # differences[i, j] = lambda * (s_j - s_i), kept where y_i > y_j
        differences = self.scale * (s.unsqueeze(0) - s.unsqueeze(1))
        valid = y.unsqueeze(1) > y.unsqueeze(0)
        terms = differences.masked_fill(~valid, float("-inf")).reshape(-1)
        return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)


@hookimpl
def register_losses(register):
    register("cosent", CoSENT, options=CosentOptions)
