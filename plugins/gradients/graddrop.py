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
on the device from its own generator (seeded by ``seed``, equal on every
process, saved for ``--resume``). ``granularity`` does not apply (every
coordinate is its own unit). Needs several tasks in a step (a sampler such
as ``all_tasks``).

Cost: the uniforms are drawn as P / 2 random 64-bit integers read as P
32-bit ones, each cut to its top 24 bits: 2U - 1 on the same 2^24-point grid
as ``2 * torch.rand() - 1`` (so the same law), at about a third of
``torch.rand``'s time on a CPU (0.085 s instead of 0.23 s for MiniLM's 22.7M
shared values). Its three [P] work vectors are kept from step to step: a
fresh 90 MB tensor costs the CPU more in first-touch page faults (~70 ms)
than the pass that fills it (~8 ms). They hold 12 bytes per shared value
for the run (270 MB for MiniLM), on top of the helper's [T, P] rows.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.structure import at_least, in_range
from mtbert.toolkit.pertask import PerTaskGradients


@attrs.frozen
class GradDropOptions:
    leak: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))  # fraction of each gradient always kept
    seed: int = attrs.field(default=0, validator=at_least(0))  # of the uniform draws


def signed_draws(bits: Tensor, generator: torch.Generator) -> Tensor:
    """Fill ``bits`` ([ceil(P / 2)] int64) with random bits; returns their [P'] int32 view
    (P' = 2 ceil(P / 2)) with the low 8 bits cleared: x with x * 2^-31 = 2U - 1 exactly, U uniform
    on the 2^24 multiples of 2^-24 in [0, 1), as ``torch.rand`` draws them. Two draws per 64-bit
    integer: the full 64-bit range comes from one generator call per integer."""
    return bits.random_(-2**63, None, generator=generator).view(torch.int32).bitwise_and_(-256)


def sign_dropout(G: Tensor, draws: Tensor, leak: float, scale: float = 1.0,
                 work: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """[T, P] rows, [P] draws with 2U - 1 = scale * draws -> ([P] update, fraction of the gradient
    mass that cancels).

    Never forms the [T, P] masks. With S = sum_t g_t and A = sum_t |g_t|, P > U is S > (2U - 1) A,
    so the kept sign is s = sign(S - (2U - 1) A) (+1: positive parts kept, -1: negative, 0 where
    P = U, e.g. where every g_t is 0), and the kept components sum to
    sum_t g_t [s g_t > 0] = s sum_t relu(s g_t) = s^2 (S + s A) / 2, since relu(x) = (x + |x|) / 2.
    ``draws`` is overwritten (it holds s, as float32 when it is a float32 or int32 [P] tensor);
    ``work``: two [P] float32 tensors for S and A (the update is written into the second)."""
    total, magnitude = work if work is not None else (torch.empty_like(G[0]), torch.empty_like(G[0]))
    torch.abs(G[0], out=magnitude)
    for row in G[1:]:  # one task at a time (a reduction over dim 0 of [T, P] is many times slower)
        magnitude.add_(torch.abs(row, out=total))  # ``total`` is the scratch until S is formed
    torch.sum(G, 0, out=total)
    cancelled = 1 - torch.linalg.vector_norm(total, ord=1) / magnitude.sum().clamp_min(1e-30)
    # the sign is written over the draws, read element by element (an int32 view shares a float32 one's bytes)
    sign_out = draws.view(torch.float32) if draws.dtype in (torch.int32, torch.float32) else draws
    sign = torch.addcmul(total, draws, magnitude, value=-scale, out=sign_out).sign_()  # sign(S - (2U-1)A)
    kept = torch.addcmul(total, sign, magnitude, out=magnitude).mul_(sign).mul_(sign).mul_(0.5)
    return (kept if leak == 0 else kept.mul_(1 - leak).add_(total, alpha=leak)), cancelled


class GradDrop(PerTaskGradients):
    """Keep one sign per coordinate, drawn in proportion to the tasks' agreement on it."""

    statistic = "cancelled"  # 1 - |sum_t g_t|_1 / sum_t |g_t|_1: how much of the tasks' gradients cancels

    def setup(self, shared, private, tasks, context=None) -> None:
        super().setup(shared, private, tasks, context)
        self.draws = torch.Generator(device=self.buffer.device).manual_seed(self.options.seed)
        # kept between steps: fresh [P] tensors would cost more in page faults than in arithmetic
        self.bits = self.buffer.new_empty((self.size + 1) // 2, dtype=torch.int64)
        self.work = (self.buffer.new_empty(self.size), self.buffer.new_empty(self.size))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "draws": self.draws.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.draws.set_state(state["draws"])

    def update(self, G: Tensor, present: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
        draws = signed_draws(self.bits, self.draws)[:G.shape[1]]
        update, cancelled = sign_dropout(G, draws, self.options.leak, 2.0**-31, self.work)
        stats = self.cosines(self.block_gram(G, exact=False).sum(0), [self.tasks[t] for t in present])  # stats only
        stats[self.statistic] = cancelled
        return update, stats


@hookimpl
def register_gradients(register):
    register("graddrop", GradDrop, options=GradDropOptions)
