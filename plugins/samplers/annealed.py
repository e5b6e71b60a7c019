"""annealed: Stickland & Murray (2019), "BERT and PALs", section 4.

Each step draws one task with p_t proportional to N_t^alpha, where alpha
falls linearly over the run, alpha = 1 - 0.8 (e - 1) / (E - 1) for epoch
e = 1..E: proportional sampling first, closer to uniform at the end, so
small tasks are not drowned out late in training. (One epoch: alpha = 1.)
"""

from __future__ import annotations

import attrs

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.structure import at_least, in_range
from mtbert_plugins.samplers.proportional import Proportional


@attrs.frozen
class AnnealedOptions:
    final_alpha: float = attrs.field(default=0.2, validator=in_range(0.0, 1.0))
    steps_per_epoch: int | None = attrs.field(default=None, validator=at_least(1))


class Annealed(Proportional):
    """One task per step, p_t ~ N_t^alpha with alpha annealed from 1 to 0.2."""

    def exponent(self, epoch: int) -> float:
        total = self.context.epochs
        if total <= 1:
            return 1.0
        return 1.0 - (1.0 - self.config.final_alpha) * (epoch - 1) / (total - 1)


@hookimpl
def register_samplers(register):
    register("annealed", Annealed, options=AnnealedOptions)
