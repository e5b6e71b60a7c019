"""uncertainty: Kendall, Gal & Cipolla (2018), "Multi-Task Learning Using Uncertainty
to Weigh Losses for Scene Geometry and Semantics" (CVPR), eqs. 7 and 10.

Each task t learns s_t = log sigma_t^2 (the paper's advice: regress the log
variance, which is stable and lets sigma^2 stay positive). With the task's
loss L_t and its spec weight w_t, the weighted loss is

    regression outputs (real-valued labels):  1/2 exp(-s_t) w_t L_t + s_t / 2
    classification outputs:                   exp(-s_t) w_t L_t + s_t / 2

-- the paper's 1/(2 sigma^2) L + log sigma for a Gaussian likelihood and
1/sigma^2 L + log sigma for a softmax one with temperature sigma^2 (their
approximation of eq. 10). A task whose loss is large or noisy gets a larger
s_t and so a smaller weight; s_t / 2 keeps s_t from growing without bound.
With ``form = "simple"`` every task uses exp(-s_t) w_t L_t + s_t, the form
many re-implementations train with.

The s_t start at ``init`` (0: every weight starts at the paper's 1 or 1/2)
and train at their own ``lr``: a handful of scalars, at the encoder's 2e-5
they would barely move in a fine-tune of a few thousand steps. They are no
weight-decayed. Costs nothing measurable: T exponentials per step.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor, nn

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Balancer, LoopContext, TaskInfo
from mtbert.plugin.structure import greater_than

REAL_VALUED = frozenset({"regression", "similarity"})


@attrs.frozen
class UncertaintyOptions:
    lr: float = attrs.field(default=1e-2, validator=greater_than(0.0))  # of the log variances
    init: float = 0.0  # starting log variance s_t of every task
    form: Literal["paper", "simple"] = "paper"


class Uncertainty(Balancer):
    """Learn each task's weight as a homoscedastic uncertainty (log variance)."""

    provides = frozenset({"learnable_task_weights"})

    def __init__(self, options: UncertaintyOptions):
        super().__init__(options)
        self.lr = options.lr
        self.log_vars = nn.ParameterDict()

    def setup(self, tasks: dict[str, TaskInfo], context: LoopContext) -> None:
        super().setup(tasks, context)
        for task in tasks:
            self.log_vars[task] = nn.Parameter(torch.full((), float(self.options.init), device=context.device))
        # 1/2 for real-valued outputs in the paper's form; 1 otherwise
        self.scale = {t: 0.5 if self.options.form == "paper" and info.output_kind in REAL_VALUED else 1.0
                      for t, info in tasks.items()}
        self.prior = 0.5 if self.options.form == "paper" else 1.0

    def weigh(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for task, loss in losses.items():
            s = self.log_vars[task]
            out[task] = (self.scale[task] * self.tasks[task].weight) * torch.exp(-s) * loss + self.prior * s
        return out

    def stats(self) -> dict[str, Tensor]:
        """sigma_t^2 = exp(s_t) of every task."""
        return {f"variance/{t}": s.detach().exp() for t, s in self.log_vars.items()}


@hookimpl
def register_balancers(register):
    register("uncertainty", Uncertainty, options=UncertaintyOptions)
