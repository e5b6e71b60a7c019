"""famo: Fast Adaptive Multitask Optimization, Liu, Feng, Stone & Liu (2023), NeurIPS
(arXiv:2306.03792), Algorithm 1.

Task logits xi (T numbers, starting at 0) give z = softmax(xi). With
D_t = L_t - L_t_min + eps (L_t_min = 0: the losses here are non-negative),
the step trains on

    sum_t z_t log(D_t) / c,      c = sum_t z_t / D_t   (detached),

whose gradient is sum_t (z_t / (c D_t)) grad L_t (the loop trains on these
detached coefficients times L_t: the same gradient): a convex combination of
the task gradients, scaled by each task's inverse loss, so that every task's
log-loss decreases at the same rate. After an update, with delta_t = log
D_t(before) - log D_t(after) the decrease of each task's log-loss, the
logits move by one Adam step (lr 0.025, the official code's) on the
gradient J^T delta of softmax at xi (J = diag(z) - z z^T), plus weight decay
gamma xi (torch's Adam with ``weight_decay = gamma``, as the official code).
gamma = 0.01, the official code's default: it pulls the logits back toward
equal weights, so a task's weight does not stay high after its loss caught
up. The first update is the official code's first: the first ``after_step``
has no earlier losses to compare with, so it takes no Adam step at all (an
empty step there would count in Adam's bias correction and make every later
update smaller: 0.744 of the official first one). In general a step takes an
Adam step only if one of its tasks has an earlier loss.

The loss "after the update" (our approximation, stated): the paper
evaluates the losses of the same batch again after the step, one extra
forward per task per step. We use the next step's losses instead (a fresh
batch, measured anyway), so FAMO costs no extra forward: O(T) scalar work
per step, independent of the model. The decrease is then measured across two
batches, which adds noise to delta but not bias (both are samples of the
same expected loss). Losses are averaged across processes before the update
(one all-reduce of T numbers per step), so every rank moves the logits
alike. The logits and Adam's moments are buffers (this is not a gradient of
the training loss, so they are not parameters of the run's optimizer),
saved in the state and the checkpoint and restored by ``--resume``. Spec
weights multiply each task's term.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Balancer, LoopContext, TaskInfo
from mtbert.plugin.structure import at_least, greater_than

EPS = 1e-8  # the official code's, in D_t = L_t - L_t_min + eps


@attrs.frozen
class FamoOptions:
    lr: float = attrs.field(default=0.025, validator=greater_than(0.0))  # of the logits (Adam)
    gamma: float = attrs.field(default=0.01, validator=at_least(0.0))  # weight decay of the logits
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's, torch's defaults as in the official code


class Famo(Balancer):
    """FAMO: task logits moved so that every task's log-loss falls at the same rate."""

    def __init__(self, options: FamoOptions):
        super().__init__(options)
        self.indices: dict[tuple[int, ...], Tensor] = {}  # task positions -> their index tensor

    def setup(self, tasks: dict[str, TaskInfo], context: LoopContext) -> None:
        super().setup(tasks, context)
        count, device = len(self.names), context.device
        for name in ("logits", "first_moment", "second_moment", "previous"):
            self.register_buffer(name, torch.zeros(count, device=device))
        self.register_buffer("has_previous", torch.zeros(count, dtype=torch.bool, device=device))
        # Adam's step count (its bias correction), on the device: a step without an update does not count
        self.adam_steps = torch.zeros((), dtype=torch.long, device=device)

    def weigh(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        idx = [self.names.index(t) for t in losses]
        z = torch.softmax(torch.stack([self.logits[i] for i in idx]), dim=0)
        gaps = torch.stack([losses[t].detach().float() for t in losses])
        self.context.average([gaps])  # the global batch's losses (no-op in one process)
        gaps = gaps + EPS
        c = (z / gaps).sum()
        # the gradient of sum_t z_t log(D_t) / c is sum_t z_t / (c D_t) grad L_t: written with detached
        # coefficients so that, under torchrun, every shard's gradient uses the global batch's D_t
        coefficients = z / (c * gaps)
        return {t: losses[t] * (coefficients[k] * self.task_weights[i]) for k, (t, i) in enumerate(zip(losses, idx))}

    def after_step(self, losses: dict[str, Tensor]) -> None:
        idx = [self.names.index(t) for t in losses]
        now = torch.stack([losses[t].float() for t in losses])
        self.context.average([now])  # every rank moves the logits alike
        index = self.index_of(tuple(idx))
        before, seen = self.previous[index], self.has_previous[index]
        delta = torch.where(seen, torch.log(before + EPS) - torch.log(now + EPS), 0.0)
        full = torch.zeros_like(self.logits).index_put((index,), delta)
        z = torch.softmax(self.logits, dim=0)
        grad = z * (full - (z * full).sum()) + self.options.gamma * self.logits  # J^T delta + weight decay
        moves = seen.any()  # an Adam step only once there is a decrease to measure
        self.adam_steps.add_(moves.long())
        beta1, beta2 = self.options.betas
        first = torch.where(moves, beta1 * self.first_moment + (1 - beta1) * grad, self.first_moment)
        second = torch.where(moves, beta2 * self.second_moment + (1 - beta2) * grad * grad, self.second_moment)
        steps = self.adam_steps.clamp_min(1).to(first.dtype)
        corrected = first / (1 - beta1 ** steps)
        scale = (second / (1 - beta2 ** steps)).sqrt() + 1e-8
        self.logits.copy_(torch.where(moves, self.logits - self.options.lr * corrected / scale, self.logits))
        self.first_moment.copy_(first)
        self.second_moment.copy_(second)
        self.previous.index_copy_(0, index, now)
        self.has_previous.index_fill_(0, index, True)

    def index_of(self, positions: tuple[int, ...]) -> Tensor:
        """The step's task positions as a device tensor, made once per set of tasks (no copy per step)."""
        if positions not in self.indices:
            self.indices[positions] = torch.tensor(positions, device=self.context.device)
        return self.indices[positions]

    def get_extra_state(self) -> dict:
        return {"adam_steps": self.adam_steps}  # the live tensor: the loop rolls it back on a skipped step

    def set_extra_state(self, state: dict) -> None:
        self.adam_steps.copy_(torch.as_tensor(state["adam_steps"]))  # a tensor, or an int from older runs

    def stats(self) -> dict[str, Tensor]:
        z = torch.softmax(self.logits, dim=0)
        return {f"weight/{t}": z[i] for i, t in enumerate(self.names)}


@hookimpl
def register_balancers(register):
    register("famo", Famo, options=FamoOptions)
