"""round_robin: one batch of each task in turn, in the spec's task order.

A task that runs out of batches restarts from a fresh shuffle (the "cycle"
loader of report 003), so by default an epoch lasts until every example of
the largest task has been seen once: T x (batches of the largest task) steps.
"""

from __future__ import annotations

import attrs

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Sampler
from mtbert.plugin.structure import at_least


@attrs.frozen
class RoundRobinOptions:
    steps_per_epoch: int | None = attrs.field(default=None, validator=at_least(1))


class RoundRobin(Sampler):
    """One task per step, cycling through the tasks in a fixed order."""

    one_task_per_step = True

    def steps_per_epoch(self) -> int:
        batches = self.context.batches
        return self.config.steps_per_epoch or len(batches) * max(batches.values())

    def plan(self, epoch: int) -> list[list[str]]:
        tasks = list(self.context.batches)
        return [[tasks[i % len(tasks)]] for i in range(self.steps_per_epoch())]


@hookimpl
def register_samplers(register):
    register("round_robin", RoundRobin, options=RoundRobinOptions)
