"""proportional and temperature sampling: one task per step, drawn at random.

proportional: p_t = N_t / sum N (N_t = task t's training examples).
temperature:  p_t proportional to N_t^(1/T); T = 1 is proportional, large T
tends to uniform.
An epoch lasts sum_t (batches of task t) steps by default, so every example
is seen once per epoch in expectation under proportional sampling.
"""

from __future__ import annotations

import attrs

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Sampler
from mtbert.plugin.structure import at_least, greater_than


@attrs.frozen
class ProportionalOptions:
    steps_per_epoch: int | None = attrs.field(default=None, validator=at_least(1))


@attrs.frozen
class TemperatureOptions:
    temperature: float = attrs.field(default=2.0, validator=greater_than(0))
    steps_per_epoch: int | None = attrs.field(default=None, validator=at_least(1))


class Proportional(Sampler):
    """One task per step, drawn with probability proportional to its size."""

    one_task_per_step = True

    def exponent(self, epoch: int) -> float:
        return 1.0

    def steps_per_epoch(self) -> int:
        return self.config.steps_per_epoch or sum(self.context.batches.values())

    def weights(self, epoch: int) -> dict[str, float]:
        alpha = self.exponent(epoch)
        return {t: float(n) ** alpha for t, n in self.context.sizes.items()}

    def plan(self, epoch: int) -> list[list[str]]:
        return self.draw(self.weights(epoch), self.steps_per_epoch(), epoch)


class Temperature(Proportional):
    """One task per step, drawn with probability proportional to size^(1/T)."""

    def exponent(self, epoch: int) -> float:
        return 1.0 / self.config.temperature


@hookimpl
def register_samplers(register):
    register("proportional", Proportional, options=ProportionalOptions)
    register("temperature", Temperature, options=TemperatureOptions)
