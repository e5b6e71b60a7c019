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

Solved without cvxpy, on the device: the equation is the stationarity
condition of the strictly convex f(alpha) = alpha^T G alpha / 2 - sum_t
log alpha_t, which is self-concordant, so damped Newton steps alpha <-
alpha - H^-1 grad f / (1 + lambda) (lambda the Newton decrement, H = G +
diag(1 / alpha^2)) stay positive and converge from any positive start,
quadratically near the solution. A fixed ``iterations`` (default 20) with
no early exit, batched over blocks, float64; tests/test_nash_mtl.py checks
that the result satisfies the equation to 1e-4. Each Newton system is
solved by ``mtbert.toolkit.smalllinalg.solve_spd`` rather than
``torch.linalg.solve``, whose singularity check made every step wait for
the GPU (seen on an H200 under torch's sync debug mode). (The official code instead
runs 20 steps of a sequence of convex programs with cvxpy on the host, and
clips the gradient norm at 1.0: use ``train.max_grad_norm = 1.0`` for that.)
When G is singular with conflicting gradients (e.g. g_2 = -g_1) there is no
solution; alpha then grows along G's null space and d stays ~0, which is
the Pareto-stationary answer.

``granularity``: whole model, each layer or each tensor. Heads and
task-specific adapters keep their own task's gradient. Needs every task in
every step (``sampler = "all_tasks"``).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from mtbert.hookspecs import hookimpl
from mtbert.structure import at_least
from mtbert.toolkit.pertask import PerTaskGradients
from mtbert.toolkit.smalllinalg import solve_spd


@attrs.frozen
class NashMTLOptions:
    update_every: int = attrs.field(default=1, validator=at_least(1))  # optimizer steps between solves
    iterations: int = attrs.field(default=20, validator=at_least(1))  # damped Newton steps per solve
    granularity: Literal["model", "layer", "tensor"] = "model"
    seed: int = attrs.field(default=0, validator=at_least(0))  # unused: Nash-MTL draws nothing (the helper asks)


def bargaining_weights(gram: Tensor, iterations: int) -> Tensor:
    """[B, T, T] Gram matrices (already normalized) -> [B, T] alpha > 0 with G alpha = 1 / alpha."""
    blocks, count, _ = gram.shape
    diagonal = gram.diagonal(dim1=1, dim2=2).clamp_min(1e-12)
    alpha = diagonal.rsqrt()  # alpha_t = 1 / |g_t|: the solution when the gradients are orthogonal
    eye = torch.eye(count, dtype=gram.dtype, device=gram.device)
    for _ in range(iterations):
        grad = (gram @ alpha.unsqueeze(-1)).squeeze(-1) - 1.0 / alpha
        hessian = gram + eye * (1.0 / (alpha * alpha)).unsqueeze(-1)
        newton = solve_spd(hessian, grad)  # H is positive definite: G is PSD, 1 / alpha^2 > 0
        decrement = (grad * newton).sum(-1).clamp_min(0).sqrt()  # lambda = sqrt(grad^T H^-1 grad)
        alpha = alpha - newton / (1.0 + decrement)[:, None]
    return alpha


class NashMTL(PerTaskGradients):
    """The Nash bargaining solution among the task gradients."""

    statistic = "max_weight"  # the largest alpha_t / sum(alpha), averaged over blocks

    def setup(self, shared, private, tasks, context=None) -> None:
        super().setup(shared, private, tasks, context)
        self.alpha = self.buffer.new_ones(self.num_blocks, len(self.tasks))  # the weights in use
        self.solves = 0  # optimizer steps seen, to solve every ``update_every``

    def state_dict(self) -> dict:
        return {**super().state_dict(), "alpha": self.alpha, "solves": self.solves}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.alpha.copy_(state["alpha"])
        self.solves = int(state["solves"])

    def coefficients(self, gram: Tensor, present: list[int]) -> tuple[Tensor, Tensor]:
        where = self.index(present)  # one copy of the positions per step
        if self.solves % self.options.update_every == 0:
            g64 = gram.double()
            scale = g64.flatten(1).norm(dim=-1).clamp_min(1e-30)  # n = |G|_F per block
            alpha = bargaining_weights(g64 / scale[:, None, None], self.options.iterations)
            alpha = (alpha / scale.sqrt()[:, None]).to(gram.dtype)  # G alpha' = 1/alpha' for G/n
            self.alpha[:, where] = alpha
        self.solves += 1
        alpha = self.alpha[:, where]
        return torch.diag_embed(alpha), (alpha / alpha.sum(-1, keepdim=True)).amax(-1).mean()


@hookimpl
def register_gradient_methods(register):
    register("nash_mtl", NashMTL, config=NashMTLOptions)
