"""Learning-rate schedules: linear warm-up, then linear or cosine decay, or constant.

The multiplier of each group's base lr at optimizer step s of S, with W
warm-up steps (W = ceil(warmup_ratio * S) unless warmup_steps is given):
  s < W:     s / W
  linear:    (S - s) / (S - W)               -> 0 at the end
  cosine:    0.5 (1 + cos(pi (s - W) / (S - W)))
  constant:  1
These are the schedules of BERT's recipe and of the Hugging Face Trainer.
"""

from __future__ import annotations

import math

import attrs
from torch.optim.lr_scheduler import LambdaLR

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.structure import at_least, in_range


@attrs.frozen
class WarmupOptions:
    warmup_ratio: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    warmup_steps: int | None = attrs.field(default=None, validator=at_least(0))

    def check(self):
        if self.warmup_steps is not None and self.warmup_ratio:
            yield "warmup_steps", "give warmup_steps or warmup_ratio, not both"

    def warmup(self, total: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return math.ceil(round(self.warmup_ratio * total, 9))  # round: 0.07 * 100 is 7.000000000000001


def multiplier(decay: str, step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _schedule(decay: str):
    def build(options: WarmupOptions, optimizer, total_steps: int) -> LambdaLR:
        warmup = options.warmup(total_steps)
        return LambdaLR(optimizer, lambda step: multiplier(decay, step, warmup, total_steps))
    build.__doc__ = f"Linear warm-up, then {decay} {'learning rate' if decay == 'constant' else 'decay'}."
    return build


@hookimpl
def register_schedulers(register):
    for decay in ("linear", "cosine", "constant"):
        register(decay, _schedule(decay), options=WarmupOptions)
