"""equal: each task's loss times its spec weight (tasks.<name>.weight, default 1) -- the plain multitask sum."""

from __future__ import annotations

from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Balancer


class Equal(Balancer):
    """Each task's loss times its fixed weight (tasks.<name>.weight)."""

    def weigh(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        return {task: loss * self.tasks[task].weight for task, loss in losses.items()}


@hookimpl
def register_balancers(register):
    register("equal", Equal)
