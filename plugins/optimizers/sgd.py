"""sgd: stochastic gradient descent with optional (Nesterov) momentum (torch's fused kernel when possible)."""

from __future__ import annotations

import attrs
import torch

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import ParamGroup
from mtbert.plugin.structure import at_least, in_range


@attrs.frozen
class SgdOptions:
    momentum: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    nesterov: bool = False
    weight_decay: float = attrs.field(default=0.0, validator=at_least(0.0))

    def check(self):
        if self.nesterov and self.momentum == 0:
            yield "nesterov", "Nesterov momentum needs momentum > 0"


def build_sgd(options: SgdOptions, groups: list[ParamGroup]) -> torch.optim.Optimizer:
    """SGD with optional momentum and weight decay."""
    torch_groups = [{"params": g.params, "lr": g.lr, "name": g.name,
                     "weight_decay": options.weight_decay if g.decay else 0.0} for g in groups]
    params = [p for g in groups for p in g.params]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.SGD(torch_groups, momentum=options.momentum, nesterov=options.nesterov, fused=fused or None)


@hookimpl
def register_optimizers(register):
    register("sgd", build_sgd, options=SgdOptions)
