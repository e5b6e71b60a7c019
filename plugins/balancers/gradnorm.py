"""gradnorm: Chen, Badrinarayanan, Lee & Rabinovich (2018), "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks" (ICML), eqs. 1-2.

Each task t has a learnable weight w_t (starting at 1); the model trains on
sum_t w_t L_t. The weights follow their own loss instead: with W the last
shared layer, G_t = |grad_W w_t L_t| = w_t |grad_W L_t|, G_bar the mean of
the G_t, the relative inverse training rate r_t = (L_t / L_t(0)) / mean_s
(L_s / L_s(0)) (L_t(0): the first step's loss), the weights minimize

    L_grad = sum_t | G_t - G_bar r_t^alpha |      (G_bar r_t^alpha held constant),

pulling each task's gradient norm at W toward the mean, larger for tasks
that train slower (r_t > 1). alpha = 1.5 is the paper's setting for its
NYUv2 experiments; alpha = 0 asks for equal gradient norms. After every
optimizer step the weights are renormalised to sum to T.

Built from the two kinds without a core special case: the weights are this
balancer's parameters (their own optimizer group at ``lr``, the paper's
0.025, saved and resumed like any balancer's), and the per-task norms
|grad_W L_t| come from the shared parameters the loop context names. W is
the last transformer layer's parameters (the last shared layer that every
task's output passes through, whatever its pooling), or, for an encoder
without numbered layers, every shared parameter. Each returned loss is
w_t L_t with w_t detached, plus a term whose value is 0 and whose gradient
is L_grad's on w_t alone, so any gradient method treats the model's losses
as usual and the weights get GradNorm's gradient.

Cost: one extra backward per task through the head and W (``autograd.grad``
with the graph kept for the gradient method), per micro-batch. Under
torchrun the W-gradients are averaged across processes before their norms
are taken (one collective of W's size per task), so the norms are the global
batch's; with gradient accumulation they are each micro-batch's. The
first-step losses L_t(0) are averaged across processes too. Where W does not
train (a heads-only phase), or a step has one task (a one-task-per-step
sampler: use ``sampler = "all_tasks"``), the weights stay as they are.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Balancer, LoopContext, TaskInfo
from mtbert.plugin.structure import at_least, greater_than
from mtbert.toolkit.pertask import block_keys


@attrs.frozen
class GradNormOptions:
    alpha: float = attrs.field(default=1.5, validator=at_least(0.0))  # asymmetry: pull toward r_t^alpha
    lr: float = attrs.field(default=0.025, validator=greater_than(0.0))  # of the weights w_t


def last_layer(shared: list[tuple[str, nn.Parameter]]) -> list[nn.Parameter]:
    """The parameters of the highest-numbered transformer layer (all of them if none is numbered)."""
    keys = block_keys([name for name, _ in shared], "layer")
    numbered = [int(k.split()[1]) for k in keys if k.startswith("layer ")]
    if not numbered:
        return [p for _, p in shared]
    top = f"layer {max(numbered)}"
    return [p for key, (_, p) in zip(keys, shared) if key == top]


class GradNorm(Balancer):
    """Learn task weights that equalise the tasks' gradient norms at the last shared layer."""

    provides = frozenset({"learnable_task_weights"})

    def __init__(self, options: GradNormOptions):
        super().__init__(options)
        self.lr = options.lr
        self.weights = nn.Parameter(torch.ones(0))
        self.register_buffer("initial", torch.zeros(0))  # L_t(0); 0 until the first step sets it

    def setup(self, tasks: dict[str, TaskInfo], context: LoopContext) -> None:
        super().setup(tasks, context)
        self.weights = nn.Parameter(torch.ones(len(self.names), device=context.device))
        self.initial = torch.zeros(len(self.names), device=context.device)
        self.indices: dict[tuple[int, ...], Tensor] = {}

    def weigh(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        order = [self.names.index(t) for t in losses]
        values = torch.stack([loss.detach().float() for loss in losses.values()])
        index = self.index(order)
        first = self.initial[index]
        self.initial[index] = torch.where(first > 0, first, self.context_mean(values))
        w = self.weights.detach()[index]
        spec = self.task_weights[index]
        weighted = {t: (w[i] * spec[i]) * loss for i, (t, loss) in enumerate(losses.items())}
        layer = [p for p in last_layer(self.context.shared_parameters()) if p.requires_grad]
        if not layer or len(losses) < 2:
            return weighted
        norms = self.gradient_norms(losses, spec, layer)  # |grad_W w_spec L_t|, [T'], detached
        ratio = values / self.initial[index].clamp_min(1e-12)
        target = (w.detach() * norms).mean() * (ratio / ratio.mean()) ** self.options.alpha  # G_bar r^alpha
        out = {}
        for i, (task, k) in enumerate(zip(losses, order)):
            # |G_t - target_t| from its own node of w (task losses share no graph but leaves); value 0
            gap = (self.weights[k] * norms[i] - target[i]).abs()
            out[task] = weighted[task] + (gap - gap.detach())
        return out

    def index(self, order: list[int]) -> Tensor:
        """The tasks' positions as a device tensor, made once per order (no copy in the step)."""
        key = tuple(order)
        if key not in self.indices:
            self.indices[key] = torch.tensor(order, device=self.context.device)
        return self.indices[key]

    def gradient_norms(self, losses: dict[str, Tensor], spec: Tensor, layer: list[nn.Parameter]) -> Tensor:
        grads = []
        for i, loss in enumerate(losses.values()):
            parts = torch.autograd.grad(spec[i] * loss, layer, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().float()
                                    for g, p in zip(parts, layer)]))
        grads = torch.stack(grads)
        self.context.average([grads])  # the global batch's W-gradient of each task
        return grads.norm(dim=1)

    def context_mean(self, values: Tensor) -> Tensor:
        averaged = values.clone()
        self.context.average([averaged])
        return averaged

    def after_step(self, losses: dict[str, Tensor]) -> None:
        with torch.no_grad():  # sum_t w_t = T, as the paper renormalises after each update
            self.weights.mul_(len(self.names) / self.weights.sum().clamp_min(1e-12))

    def stats(self) -> dict[str, Tensor]:
        return {f"weight/{t}": self.weights[i].detach() for i, t in enumerate(self.names)}


@hookimpl
def register_balancers(register):
    register("gradnorm", GradNorm, options=GradNormOptions)
