"""nash_mtl: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya (2022),
"Multi-Task Learning as a Bargaining Game" (ICML), Algorithm 1.

The update d = sum_t alpha_t g_t is the Nash bargaining solution among the
tasks: alpha > 0 solves

    (G alpha)_t = 1 / alpha_t  for every task t,   G = the Gram matrix g_i . g_j,

so that every task's share of the improvement, g_t . d = 1 / alpha_t, is
balanced in the product sense. As in the official code, the system is solved
for G divided by its Frobenius norm n (for conditioning; its solution
alpha' gives alpha = alpha' / sqrt(n)), and alpha is refreshed every
``update_every`` optimizer steps (default 1) and reused in between.

Solved without cvxpy, on the device, on the Gram matrix divided by its trace
(alpha is then that problem's alpha divided by the square root of the trace:
the update is a function of the gradients' directions and relative sizes
only, |d|^2 = alpha^T G alpha = T whatever their scale, so d(s G) = d(G)).
The equation is the stationarity condition of the strictly convex
f(alpha) = alpha^T G alpha / 2 - sum_t log alpha_t, which is self-concordant:
damped Newton steps alpha <- alpha - H^-1 grad f / (1 + lambda) (lambda the
Newton decrement, H = G + diag(1 / alpha^2)) stay positive and converge from
any positive start. Two changes make a fixed number of them (``iterations``,
default 40) enough on every case family, nearly opposite gradients
included: before each step alpha is rescaled to the best point on its ray
(f(a alpha) is least at a^2 = T / alpha^T G alpha), so the size of alpha,
which grows like 1 / sin(angle) as two gradients become opposite, costs no
iterations; and the Newton system is solved in the scaled variable alpha /
alpha_k, whose matrix diag(alpha) G diag(alpha) + I has eigenvalues of at
least 1 (``solve_spd`` on H itself lost all precision once alpha reached
1e5). 20 unscaled steps left 37% of the equation unmet at an angle of
pi - 1e-3 between |g_1| = 1 and |g_2| = 2; now it is met to 1e-9.

Where no solution exists, what the answer is instead (documented, finite):
- a task whose gradient is zero (at the rows' precision,
  ``pertask.rank_tolerance``) has nothing to gain from any direction; it is
  left out of the bargaining (alpha_t = 0) and the others bargain;
- when the origin is in the convex hull of the (other) gradients, i.e. the
  step is Pareto-stationary (g_2 = -2 g_1 exactly, dependent gradients that
  cancel), f is unbounded below and alpha would grow without end: then
  alpha = 0 and d = 0, what MGDA answers there. It is recognised as a solve
  that did not meet the equation to 1e-4 after ``iterations`` steps, which
  happens only within a few float32 epsilons of stationarity.

The official code instead runs 20 steps of a sequence of convex programs
with cvxpy on the host, and clips the gradient norm at 1.0: use
``train.max_grad_norm = 1.0`` for that. Each Newton system is solved by
``mtbert.toolkit.smalllinalg.solve_spd`` rather than ``torch.linalg.solve``,
whose singularity check made every step wait for the GPU (seen on an H200
under torch's sync debug mode).

``granularity``: whole model, each layer or each tensor. Heads and
task-specific adapters keep their own task's gradient. Needs every task in
every step (``sampler = "all_tasks"``).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.structure import at_least
from mtbert.toolkit.pertask import PerTaskGradients, normalized, rank_tolerance
from mtbert.toolkit.smalllinalg import solve_spd

SOLVED = 1e-4  # largest |alpha_t (G alpha)_t - 1| of a solve that counts as a solution


@attrs.frozen
class NashMTLOptions:
    __retired_keys__ = {"seed": "the method draws nothing"}  # older specs gave it one

    update_every: int = attrs.field(default=1, validator=at_least(1))  # optimizer steps between solves
    iterations: int = attrs.field(default=40, validator=at_least(1))  # damped Newton steps per solve
    granularity: Literal["model", "layer", "tensor"] = "model"


def bargaining_weights(gram: Tensor, iterations: int = 40) -> Tensor:
    """[B, T, T] Gram matrices -> [B, T] alpha >= 0 with (G alpha)_t = 1 / alpha_t for every task
    whose gradient is not zero (alpha_t = 0 for the others); all zero where no solution exists."""
    unit = normalized(gram)
    blocks, count, _ = unit.shape
    squared = unit.diagonal(dim1=1, dim2=2)
    present = squared > squared.amax(-1, keepdim=True) * rank_tolerance(count)
    eye = torch.eye(count, dtype=unit.dtype, device=unit.device)
    # a left-out task is decoupled (its row and column those of the identity): its own equation
    # alpha_t^2 = 1 holds apart from the others', and alpha_t is zeroed at the end
    g = torch.where(present[:, :, None] & present[:, None, :], unit, eye)
    alpha = g.diagonal(dim1=1, dim2=2).rsqrt()  # 1 / |g_t|: the solution when the gradients are orthogonal
    for _ in range(iterations):
        quadratic = torch.einsum("bi,bij,bj->b", alpha, g, alpha)
        alpha = alpha * (count / quadratic).sqrt()[:, None]  # the best point on the ray
        residual = alpha * (g @ alpha.unsqueeze(-1)).squeeze(-1) - 1.0  # diag(alpha) grad f
        scaled = alpha[:, :, None] * g * alpha[:, None, :] + eye  # diag(alpha) H diag(alpha)
        step = solve_spd(scaled, residual)
        decrement = (residual * step).sum(-1).clamp_min(0).sqrt()
        alpha = alpha * (1.0 - step / (1.0 + decrement)[:, None])
    error = (alpha * (g @ alpha.unsqueeze(-1)).squeeze(-1) - 1.0).abs().amax(-1)
    solved = (error <= SOLVED) & torch.isfinite(alpha).all(-1)  # NaN errors compare False
    alpha = torch.where(solved[:, None] & present, alpha, 0.0)
    trace = gram.diagonal(dim1=1, dim2=2).sum(-1)
    return alpha * torch.where(trace > 0, trace, 1.0).rsqrt()[:, None]  # back to G's scale


class NashMTL(PerTaskGradients):
    """The Nash bargaining solution among the task gradients."""

    statistic = "max_weight"  # the largest alpha_t / sum(alpha), averaged over blocks

    def setup(self, shared, private, tasks, context=None) -> None:
        super().setup(shared, private, tasks, context)
        # the weights in use (float64: alpha spans many orders of magnitude near opposite gradients)
        self.alpha = self.buffer.new_ones(self.num_blocks, len(self.tasks), dtype=torch.float64)
        self.solves = 0  # optimizer steps seen (skipped ones too, as the learning-rate schedule counts)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "alpha": self.alpha, "solves": self.solves}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.alpha.copy_(state["alpha"])
        self.solves = int(state["solves"])

    def coefficients(self, gram: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        where = self.index(present)  # one copy of the positions per step
        if self.solves % self.options.update_every == 0:
            self.alpha[:, where] = bargaining_weights(gram.double(), self.options.iterations)
        self.solves += 1
        alpha = self.alpha[:, where]
        total = alpha.sum(-1, keepdim=True)
        return torch.diag_embed(alpha), (alpha / torch.where(total > 0, total, 1.0)).amax(-1).mean()


@hookimpl
def register_gradients(register):
    register("nash_mtl", NashMTL, options=NashMTLOptions)
