"""proportional_joint: each task's single pass per epoch, its batches spread over shared steps.

An epoch lasts as many steps as the largest task has batches; every task
joins exactly as many of those steps as it has batches, at positions drawn
at random for each epoch (seeded, so a resumed run replays them). The
largest task is in every step, the others in a share of the steps equal to
their size against the largest: with the course data (SST 267 batches,
Quora 442, STS 189) a step holds Quora, SST in 60% of the steps and STS in
43%.

So an epoch sees every example of every task once, as the ``proportional``
sampler does in expectation, while several tasks share each step, which the
gradient methods (PCGrad, IMTL-G, Nash-MTL, ...) need: they combine the
gradients of the tasks present in a step. ``all_tasks`` instead puts every
task in every step and cycles the smaller ones, so at one budget of batches
the small tasks see more epochs and the largest fewer than their own
single-task runs would.
"""

from __future__ import annotations

import torch

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Sampler


class ProportionalJoint(Sampler):
    """Several tasks per step; each task's batches once per epoch."""

    one_task_per_step = False

    def steps_per_epoch(self) -> int:
        return max(self.context.batches.values())

    def plan(self, epoch: int) -> list[list[str]]:
        steps = self.steps_per_epoch()
        generator = self.generator(epoch)
        joins = [[False] * steps for _ in self.context.batches]
        for row, batches in zip(joins, self.context.batches.values()):
            for position in torch.randperm(steps, generator=generator)[:batches].tolist():
                row[position] = True
        tasks = list(self.context.batches)  # within a step, the spec's order
        return [[task for task, row in zip(tasks, joins) if row[i]] for i in range(steps)]


@hookimpl
def register_samplers(register):
    register("proportional_joint", ProportionalJoint)
