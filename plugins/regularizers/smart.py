"""smart: Jiang et al. (2020), "SMART: Robust and Efficient Fine-Tuning for
Pre-trained Natural Language Models through Principled Regularized
Optimization", ACL 2020 (arXiv:1911.03437), section 3.

Each task's loss gets ``lambda_s * R_s + mu * D_breg``; either term can be
switched off (not both).

Smoothness-inducing adversarial regularizer (section 3.1, eq. 2)::

    R_s = max_{||x~ - x||_inf <= epsilon}  l_s(f(x~; theta), f(x; theta))

with x the input embeddings (``model.embed(batch)``: after the embedding
lookup, where the paper perturbs). The max is approximated as the paper's
code does: x~ = x + delta, delta ~ N(0, sigma^2) elementwise, then K
projected ascent steps on ``l_s(f(x + delta), f(x))`` with respect to delta
only (the model's output and x are constants here)::

    g     = d l_s / d delta
    delta <- clamp(delta + eta * g / (||g||_inf + tiny), -epsilon, epsilon)

where the infinity norm is taken per token vector (over the hidden
dimension). Finally ``R_s = l_s(f(x + delta), f(x))`` with delta fixed and
gradients flowing into the model through both arguments. ``f(x)`` is the
loop's own clean forward output, reused, not recomputed. For a bi-encoded
pair (``model.embed`` gives two tensors) both sequences get independent
noise.

Momentum Bregman proximal point (section 3.2, eq. 4 with momentum)::

    D_breg = l_s(f(x; theta), f(x; theta~)),
    theta~ <- beta * theta~ + (1 - beta) * theta   after every optimizer step

theta~ is a teacher: a deep copy of the whole model taken at the first
penalty call (so D_breg is 0 there, dropout aside), never trained, run
without gradients in the student's train/eval mode.

l_s by the head's output kind: the symmetric KL divergence
KL(p||q) + KL(q||p) of the softmax distributions ("multiclass") or of the
Bernoulli(sigmoid) distributions ("binary"), averaged over the batch; the
mean squared error for real outputs ("regression", and "similarity"
cosines). As in MT-DNN's ``SymKlCriterion``, each KL direction detaches the
probabilities of its target distribution but keeps the graph of the
log-probabilities, so ``KL(q||p)`` sends gradient through log p only and
``KL(p||q)`` through log q only (in total: soft cross-entropy gradients in
both directions). All divergences are computed in float32.

Defaults are the paper's: sigma = 1e-5, epsilon = 1e-5, eta = 1e-3, K = 1,
beta = 0.99, mu = 1 (lambda_s in 1..5, here 1). Note that many student codes
and MT-DNN's public SMART implement only R_s; the Bregman term (a full model
copy in memory plus one no-grad forward per batch) is part of the method and
on by default here (``bregman = false`` turns it off).

Cost, and ``fraction`` (ours, not the paper's): with K = 1 the adversarial
term adds a perturbed forward, a backward to the noise only (no weight
gradients) and a second perturbed forward with a full backward, about five
forward-costs on top of a plain step's three, so a step costs about 2.7x a
plain one (docs/benchmarks.md). ``fraction < 1`` computes R_s on
ceil(fraction * B) random rows of each batch of B: R_s is a mean over
examples, so this estimates the same quantity without bias, with more
variance, for about ``fraction`` times the extra cost (0.5: 1.9x on our CPU;
on SST over three seeds it kept the full method's mean gain, with more spread).
The default, 1.0, is the paper's method.

Caveats: in train mode the perturbed and the teacher forwards draw their own
dropout masks, so both terms also measure dropout noise (as in the paper's
code). Under bf16 autocast (the loop's default on CUDA) a perturbation of
1e-5 is far below bf16's resolution for embedding values of order 1 (2^-8),
so it is rounded away in the first matmul: with dropout off, R_s is exactly 0
at the paper's defaults in bf16 (in fp32 it is small but positive). Use
``train.precision = "fp32"`` or a larger sigma/epsilon (1e-3 and up survive)
when the adversarial part must be more than a dropout-consistency term.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbert.base.errors import PluginError
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Regularizer
from mtbert.plugin.structure import at_least, in_range, non_empty


@attrs.frozen
class SmartOptions:
    adversarial: bool = True  # the smoothness term lambda_s * R_s
    bregman: bool = True  # the proximal term mu * D_breg (a teacher copy of the model)
    lambda_s: float = attrs.field(default=1.0, validator=at_least(0.0))
    mu: float = attrs.field(default=1.0, validator=at_least(0.0))
    sigma: float = attrs.field(default=1e-5, validator=at_least(0.0))  # initial noise std
    epsilon: float = attrs.field(default=1e-5, validator=at_least(0.0))  # perturbation bound (inf-norm)
    step_size: float = attrs.field(default=1e-3, validator=at_least(0.0))  # eta
    ascent_steps: int = attrs.field(default=1, validator=at_least(0))  # K
    beta: float = attrs.field(default=0.99, validator=in_range(0.0, 1.0))  # teacher momentum
    tasks: list[str] | None = attrs.field(default=None, validator=non_empty)  # None: every task
    fraction: float = attrs.field(default=1.0, validator=in_range(0.0, 1.0))  # share of each batch given R_s

    def check(self):
        if self.fraction <= 0.0:
            yield "fraction", f"fraction must be above 0 (it is {self.fraction}); 1.0 regularizes every example"
        if not self.adversarial and not self.bregman:
            yield "adversarial", "both SMART terms are off (adversarial = false, bregman = false); " \
                                 "turn one on or drop the regularizer"


# -- the divergences l_s --------------------------------------------------------------

def _symmetric_kl_logprobs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(q||p) + KL(p||q) over the last dim, batch-averaged; target probabilities detached."""
    p, q = log_p.detach().exp(), log_q.detach().exp()
    kl_q_p = (q * (log_q.detach() - log_p)).sum(-1)  # gradient through log p only
    kl_p_q = (p * (log_p.detach() - log_q)).sum(-1)  # gradient through log q only
    return (kl_q_p + kl_p_q).mean()


def symmetric_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Symmetric KL between softmax(logits_p) and softmax(logits_q) ([B, C]), mean over B."""
    return _symmetric_kl_logprobs(F.log_softmax(logits_p.float(), -1), F.log_softmax(logits_q.float(), -1))


def binary_symmetric_kl(logit_p: Tensor, logit_q: Tensor) -> Tensor:
    """Symmetric KL between Bernoulli(sigmoid(logit_p)) and Bernoulli(sigmoid(logit_q)) ([B]).

    softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)], so this is the two-class case."""
    def two_class(z: Tensor) -> Tensor:
        z = z.float()
        return torch.stack([F.logsigmoid(-z), F.logsigmoid(z)], -1)
    return _symmetric_kl_logprobs(two_class(logit_p), two_class(logit_q))


def squared_error(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error in float32, gradients to both arguments."""
    return (a.float() - b.float()).pow(2).mean()


DIVERGENCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "multiclass": symmetric_kl,
    "binary": binary_symmetric_kl,
    "regression": squared_error,
    "similarity": squared_error,
}


def divergence(kind: str, a: Tensor, b: Tensor) -> Tensor:
    """l_s for a head output kind."""
    try:
        fn = DIVERGENCES[kind]
    except KeyError:
        raise PluginError(f"smart has no divergence for head output kind {kind!r}; "
                          f"known: {', '.join(DIVERGENCES)}") from None
    return fn(a, b)


# -- the adversarial perturbation ------------------------------------------------------
# Embeddings and noise are a tensor, or a tuple of tensors for a bi-encoded pair.

def _each(fn, *xs):
    if isinstance(xs[0], tuple):
        return tuple(fn(*parts) for parts in zip(*xs))
    return fn(*xs)


def initial_noise(embeds, sigma: float):
    """delta ~ N(0, sigma^2) of the embeddings' shape (independent per part of a pair)."""
    return _each(lambda x: torch.randn_like(x) * sigma, embeds)


def ascend(noise, grad, step_size: float, epsilon: float):
    """One projected ascent step: delta + eta * g / (||g||_inf + tiny), clamped to [-epsilon, epsilon].

    The infinity norm is taken per token vector (over the last dim)."""
    def step(delta: Tensor, g: Tensor) -> Tensor:
        norm = g.abs().amax(-1, keepdim=True) + torch.finfo(g.dtype).tiny
        return (delta + step_size * g / norm).clamp(-epsilon, epsilon)
    return _each(step, noise, grad)


def adversarial_noise(forward: Callable, embeds, target: Tensor, kind: str, noise,
                      step_size: float, epsilon: float, steps: int):
    """``steps`` ascent steps on l_s(forward(embeds + delta), target) w.r.t. delta only.

    ``forward`` maps (perturbed) embeddings to the head's output; embeds and
    target are detached here. Returns the final delta (detached)."""
    embeds = _each(lambda x: x.detach(), embeds)
    target = target.detach()
    noise = _each(lambda d: d.detach(), noise)
    with torch.enable_grad():
        for _ in range(steps):
            noise = _each(lambda d: d.requires_grad_(), noise)
            out = forward(_each(lambda x, d: x + d, embeds, noise))
            loss = divergence(kind, out, target)
            parts = noise if isinstance(noise, tuple) else (noise,)
            grads = torch.autograd.grad(loss, parts)
            grad = grads if isinstance(noise, tuple) else grads[0]
            noise = ascend(_each(lambda d: d.detach(), noise), grad, step_size, epsilon)
    return noise


def random_rows(batch: dict[str, Tensor], output: Tensor, fraction: float) -> tuple[dict[str, Tensor], Tensor]:
    """ceil(fraction * B) random rows of a batch and of the clean output, drawn without replacement.

    Every tensor of the batch with B rows is cut the same way (ids, masks, labels, and the
    second sequence's of a bi-encoded pair); the output keeps its graph, so R_s still sends
    gradient through the clean forward for the chosen rows."""
    size = output.shape[0]
    rows = torch.randperm(size, device=output.device)[:max(1, math.ceil(fraction * size))]
    chosen = {k: v.index_select(0, rows) if isinstance(v, Tensor) and v.dim() and v.shape[0] == size else v
              for k, v in batch.items()}
    return chosen, output.index_select(0, rows)


# -- the regularizer -----------------------------------------------------------------

class Smart(Regularizer):
    """lambda_s * R_s + mu * D_breg per task batch; the teacher follows by EMA after each step."""

    needs_embeddings = True  # R_s perturbs model.embed(batch)

    def __init__(self, config: SmartOptions):
        self.config = config
        self.teacher: nn.Module | None = None
        self.saved_teacher: dict | None = None  # a resumed run's teacher, loaded when it is made
        self.last: dict[str, Tensor] = {}

    def _applies(self, model, task: str) -> bool:
        # validation has checked that `tasks` names tasks of the spec
        return self.config.tasks is None or task in self.config.tasks

    def state_dict(self) -> dict:
        return {"teacher": None if self.teacher is None else self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher, self.saved_teacher = None, state["teacher"]

    def make_teacher(self, model: nn.Module) -> nn.Module:
        # The tokenizer (if any) is shared, not copied: the teacher never tokenizes.
        tokenizer = getattr(getattr(model, "encoder", None), "tokenizer", None)
        memo = {id(tokenizer): tokenizer} if tokenizer is not None else {}
        teacher = copy.deepcopy(model, memo)
        teacher.requires_grad_(False)
        return teacher

    def penalty(self, model, task: str, batch: dict[str, Tensor], output: Tensor) -> Tensor:
        c = self.config
        if not self._applies(model, task):
            return output.new_zeros((), dtype=torch.float32)
        kind = model.heads[task].output_kind
        total = output.new_zeros((), dtype=torch.float32)
        if c.adversarial:
            rows, target = (batch, output) if c.fraction >= 1.0 else random_rows(batch, output, c.fraction)
            embeds = model.embed(rows)

            def forward(inputs):
                return model(task, rows, inputs_embeds=inputs)

            noise = adversarial_noise(forward, embeds, target, kind, initial_noise(embeds, c.sigma),
                                      c.step_size, c.epsilon, c.ascent_steps)
            r_s = divergence(kind, forward(_each(lambda x, d: x + d, embeds, noise)), target)
            total = total + c.lambda_s * r_s
            self.last["smart/adversarial"] = r_s.detach()
        if c.bregman:
            if self.teacher is None:
                self.teacher = self.make_teacher(model)
                if self.saved_teacher is not None:
                    self.teacher.load_state_dict(self.saved_teacher)
                    self.saved_teacher = None
            if self.teacher.training != model.training:
                self.teacher.train(model.training)
            with torch.no_grad():
                teacher_output = self.teacher(task, batch)
            d_breg = divergence(kind, output, teacher_output)
            total = total + c.mu * d_breg
            self.last["smart/bregman"] = d_breg.detach()
        return total

    @torch.no_grad()
    def after_step(self, model) -> None:
        """theta~ <- beta * theta~ + (1 - beta) * theta, for every parameter."""
        if self.teacher is None:
            return
        teacher, student = list(self.teacher.parameters()), [p.detach() for p in model.parameters()]
        if len(teacher) != len(student):
            raise RuntimeError("smart: the model's parameters changed since the teacher was copied")
        torch._foreach_mul_(teacher, self.config.beta)
        torch._foreach_add_(teacher, student, alpha=1.0 - self.config.beta)

    def stats(self) -> dict[str, Tensor]:
        return dict(self.last)


@hookimpl
def register_regularizers(register):
    register("smart", Smart, options=SmartOptions)
