"""all_tasks: every step takes one batch of every task (joint training).

The per-task losses of a step are handed together to the gradient method,
which is what PCGrad and GradVac need. An epoch lasts as many steps as the
largest task has batches; smaller tasks restart from a fresh shuffle.
"""

from __future__ import annotations

import attrs

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Sampler
from mtbert.plugin.structure import at_least


@attrs.frozen
class AllTasksOptions:
    steps_per_epoch: int | None = attrs.field(default=None, validator=at_least(1))


class AllTasks(Sampler):
    """Every task in every step."""

    one_task_per_step = False

    def steps_per_epoch(self) -> int:
        return self.config.steps_per_epoch or max(self.context.batches.values())

    def plan(self, epoch: int) -> list[list[str]]:
        tasks = list(self.context.batches)
        return [list(tasks) for _ in range(self.steps_per_epoch())]


@hookimpl
def register_samplers(register):
    register("all_tasks", AllTasks, options=AllTasksOptions)
