"""graddrop: Gradient Sign Dropout, Chen, Ngiam, Huang, Luong, Kretzschmar, Chai &
Anguelov (2020), "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
Sign Dropout" (NeurIPS), Algorithm 1.

For every coordinate of the shared gradient, the positive sign purity
P = (1 + sum_t g_t / sum_t |g_t|) / 2 and one uniform draw U decide which
sign survives: where P > U the tasks' positive components are kept and the
negative ones dropped, and the reverse where P < U. The update is

    sum_t (leak_t + (1 - leak_t) M_t) * g_t,   M_t = [P > U][g_t > 0] + [P < U][g_t < 0],

so coordinates where the tasks agree pass whole and conflicting ones keep
one side, chosen in proportion to its mass. ``leak`` (default 0, the paper's
setting) lets a fraction of every gradient through.

Where it acts: the paper applies it to the gradients with respect to a
shared activation layer (the last shared representation, with a sign
correction for the batch sum). mtbert applies it to the gradients of the
shared PARAMETERS, coordinate by coordinate, as torchjd's GradDrop
aggregator does (the tests compare with it); with each task's own batch (the
all-tasks sampler draws one per task) the tasks' activations are not the same
tensor, so the representation form does not apply directly. Elementwise, so
not a Gram-matrix method: it reads the [T, P] rows twice more (their sum and
their absolute sum: the kept components follow from those two without any
[T, P] mask, in a few passes over [P] vectors) and draws P uniforms per step
on the device from its own generator
(seeded by ``seed``, equal on every process, saved for ``--resume``).
``granularity`` does not apply (every coordinate is its own unit).
Needs every task in every step (``sampler = "all_tasks"``).
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from mtbert.hookspecs import hookimpl
from mtbert.structure import at_least, in_range
from mtbert.toolkit.pertask import PerTaskGradients


@attrs.frozen
class GradDropOptions:
    leak: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))  # fraction of each gradient always kept
    seed: int = attrs.field(default=0, validator=at_least(0))  # of the uniform draws


def sign_dropout(G: Tensor, uniform: Tensor, leak: float) -> tuple[Tensor, Tensor]:
    """[T, P] rows, [P] uniforms -> ([P] update, fraction of the gradient mass that cancels).

    Never forms the [T, P] masks. With S = sum_t g_t and A = sum_t |g_t|, P > U is S > (2U - 1) A,
    so the kept sign is s = sign(S - (2U - 1) A) (+1: positive parts kept, -1: negative, 0 where
    P = U, e.g. where every g_t is 0), and the kept components sum to
    sum_t g_t [s g_t > 0] = s sum_t relu(s g_t) = s^2 (S + s A) / 2, since relu(x) = (x + |x|) / 2.
    ``uniform`` is overwritten."""
    total = G.sum(0)
    magnitude, scratch = G[0].abs(), torch.empty_like(total)
    for row in G[1:]:  # one task at a time: [P] temporaries, not [T, P]
        magnitude.add_(torch.abs(row, out=scratch))
    cancelled = 1 - torch.linalg.vector_norm(total, ord=1) / magnitude.sum().clamp_min(1e-30)
    # in place, so that four [P] vectors are all it holds: the sign in ``uniform``, the kept sum in ``scratch``
    sign = torch.addcmul(total, uniform.mul_(2).sub_(1), magnitude, value=-1, out=uniform).sign_()  # sign(S - (2U-1)A)
    kept = torch.addcmul(total, sign, magnitude, out=scratch).mul_(sign).mul_(sign).mul_(0.5)
    return (kept if leak == 0 else kept.mul_(1 - leak).add_(total, alpha=leak)), cancelled


class GradDrop(PerTaskGradients):
    """Keep one sign per coordinate, drawn in proportion to the tasks' agreement on it."""

    statistic = "cancelled"  # 1 - |sum_t g_t|_1 / sum_t |g_t|_1: how much of the tasks' gradients cancels

    def setup(self, shared, private, tasks, context=None) -> None:
        super().setup(shared, private, tasks, context)
        self.draws = torch.Generator(device=self.buffer.device).manual_seed(self.options.seed)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "draws": self.draws.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.draws.set_state(state["draws"])

    def update(self, G: Tensor, present: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
        uniform = torch.rand(G.shape[1], generator=self.draws, device=G.device, dtype=G.dtype)
        update, cancelled = sign_dropout(G, uniform, self.options.leak)
        stats = self.cosines(self.block_gram(G).sum(0), [self.tasks[t] for t in present])
        stats[self.statistic] = cancelled
        return update, stats


@hookimpl
def register_gradient_methods(register):
    register("graddrop", GradDrop, config=GradDropOptions)
