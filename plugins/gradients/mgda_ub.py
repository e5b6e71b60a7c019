"""mgda_ub: MGDA-UB, the upper-bound form of MGDA, Sener & Koltun (2018), "Multi-Task
Learning as Multi-Objective Optimization" (NeurIPS), Section 3.3.

When every task's loss depends on the shared parameters only through a shared
representation Z, |sum_t a_t grad_theta L_t| <= |dZ/dtheta| |sum_t a_t grad_Z L_t|,
and the paper minimises the right-hand side: MGDA's min-norm problem on the
simplex, posed on the gradients with respect to Z, which a backward pass
through the heads alone gives for every task; then one backward of
sum_t a_t L_t through the encoder. As in the paper's code, that last
backward weighs the raw losses (also the heads' gradients: each head gets
a_t times its task's gradient).

Z here: the encoder's last-layer token states of the step's batches. Each
task has its own batch, so Z is the states of all of them together and
L_t depends only on its own batch's rows of Z: the gradients grad_Z L_t are
zero outside task t's rows, hence orthogonal, and their Gram matrix is the
diagonal d_t = |grad_Z L_t|^2. The min-norm point of orthogonal vectors has
a closed form, a_t = (1 / d_t) / sum_s (1 / d_s): it makes a_t d_t, the
first-order decrease of each task's loss along the update at Z, the same
for every task. It is computed exactly (what Frank-Wolfe would converge to),
on the device, without iterations. The bound treats as part of the heads
whatever acts on Z: BERT's pooler for a head with ``pooling = "pooler"``,
adapters on the encoder's output (the shared BiLSTM).

``normalization`` is the paper code's (as for ``mgda``): the problem is
solved for grad_Z L_t / n_t, n_t = 1 ("none"), |grad_Z L_t| ("l2"), L_t
("loss") or L_t |grad_Z L_t| ("loss+"), so a_t is proportional to
n_t^2 / d_t: on these orthogonal gradients "l2" gives every task 1/T (the
mean loss) and "loss+" weights in proportion to L_t^2. Needs several tasks
in a step.

Cost: T backward passes through the heads only, and one through the
encoder, as ``sum`` does; no per-task rows of the shared gradient, so its
memory does not grow with T. With ``train.accumulate`` > 1 the weights are
solved for each micro-batch (each backward needs them before the next
micro-batch's graph exists). Under several processes the d_t (and the
losses) are averaged across processes before the solve, so every rank uses
the global batch's weights.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import GradientMethod


@attrs.frozen
class MgdaUbOptions:
    normalization: Literal["none", "l2", "loss", "loss+"] = "none"


def orthogonal_min_norm_weights(squared_norms: Tensor) -> Tensor:
    """[T] squared norms of mutually orthogonal vectors -> [T] weights of their min-norm convex
    combination: proportional to 1 / d_t; zero vectors share all the weight. Divided by the
    largest first, so the weights do not depend on the norms' scale."""
    largest = squared_norms.amax()
    relative = squared_norms / torch.where(largest > 0, largest, 1.0)
    zero = relative == 0
    inverse = torch.where(zero, 0.0, 1.0 / torch.where(zero, 1.0, relative))
    weights = torch.where(zero.any(), zero.to(relative.dtype), inverse)
    return weights / weights.sum()


class MgdaUb(GradientMethod):
    """MGDA on the gradients at the shared representation, then one backward."""

    needs_all_tasks = True
    needs_representations = True

    def __init__(self, options):
        self.options = options
        self.weights: dict[str, Tensor] = {}

    def backward(self, losses: dict[str, Tensor], representations: dict[str, list[Tensor]]) -> None:
        names = list(losses)
        squared = []
        for task in names:
            grads = torch.autograd.grad(losses[task], representations[task], retain_graph=True, allow_unused=True)
            # in float64: squares of float32 values overflow float32 from |g| ~ 1e19 and underflow below 1e-19
            squared.append(sum((g.double().square().sum() for g in grads if g is not None),
                               losses[task].new_zeros((), dtype=torch.float64)))
        squared = torch.stack(squared)
        values = torch.stack([losses[t].detach().double() for t in names])
        self.context.average([squared, values])  # the global batch's (up to one factor common to all tasks)
        kind = self.options.normalization
        norms = {"none": torch.ones_like(squared), "l2": squared.sqrt(), "loss": values.abs(),
                 "loss+": values.abs() * squared.sqrt()}[kind]
        norms = torch.where(norms > 0, norms, 1.0)  # a zero gradient or loss is left as it is
        alpha = orthogonal_min_norm_weights(squared / norms.square()).float()
        torch.stack([alpha[i] * losses[t] for i, t in enumerate(names)]).sum().backward()
        self.weights = {t: alpha[i] for i, t in enumerate(names)}

    def finish(self) -> dict[str, Tensor]:
        return {f"weight/{task}": weight for task, weight in self.weights.items()}


@hookimpl
def register_gradients(register):
    register("mgda_ub", MgdaUb, options=MgdaUbOptions)
