"""A run as a list of phases, and what each phase trains.

Without ``[[phases]]`` a run is one phase made of ``[train]`` and the
top-level sampler, gradient method and balancer. With them, each phase
names its tasks, sampler, gradient method, balancer, trainable part, learning rates and length,
and falls back to the top level for whatever it leaves out. This expresses
report 000's "1 full + 4 last-layer epochs", report 001's heads-first-then-
full transfer and report 003's STS-first sequential learning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import attrs
from torch import nn

from mtbert.base.errors import MtbertError

DEFAULT_EPOCHS = 3  # a run's (or a phase's) length when its spec gives neither epochs nor steps

if TYPE_CHECKING:  # types only: phases are resolved from a structured spec, never import it
    from mtbert.config.spec import ComponentSpec, Spec


@attrs.frozen
class Phase:
    index: int
    name: str
    tasks: list[str]
    sampler: ComponentSpec
    gradient: ComponentSpec
    balancer: ComponentSpec
    trainable: str
    last_layers: int
    epochs: int | None  # exactly one of epochs / steps is set
    steps: int | None
    lr: float
    head_lr: float | None
    where: Callable[[str], str] = attrs.field(eq=False, repr=False)  # spec path of one of its keys


def resolve_phases(spec: Spec) -> list[Phase]:
    train = spec.train
    if not spec.phases:
        steps = train.steps
        epochs = None if steps is not None else (train.epochs or DEFAULT_EPOCHS)
        return [Phase(0, "train", list(spec.tasks), spec.sampler, spec.gradient, spec.balancer, train.trainable,
                      train.last_layers, epochs, steps, train.lr, train.head_lr,
                      where=lambda key: key if key in ("gradient", "sampler", "balancer") else f"train.{key}")]
    phases = []
    for i, p in enumerate(spec.phases):
        phases.append(Phase(
            i, p.name or f"phase{i + 1}", list(p.tasks or spec.tasks), p.sampler or spec.sampler,
            p.gradient or spec.gradient, p.balancer or spec.balancer, p.trainable or train.trainable, p.last_layers or train.last_layers,
            p.epochs, p.steps, p.lr or train.lr, p.head_lr or (None if p.lr else train.head_lr),
            where=lambda key, i=i: f"phases[{i}].{key}"))
    return phases


def set_trainable(model, phase: Phase) -> int:
    """Freeze everything the phase does not train; returns the trainable parameter count."""
    encoder = model.encoder
    chosen: list[nn.Module] = [model.heads]
    if phase.trainable == "all":
        chosen = [model]
    elif phase.trainable == "adapters":
        chosen += [model.adapters]
    elif phase.trainable == "last_layers":
        chosen += [model.adapters, *encoder.layers[-phase.last_layers:]]
        if getattr(encoder, "pooler", None) is not None:
            chosen.append(encoder.pooler)
    for param in model.parameters():
        param.requires_grad_(False)
    for module in chosen:
        for param in module.parameters():
            param.requires_grad_(True)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if count == 0:
        raise MtbertError(f"phase {phase.name} trains nothing: trainable = \"{phase.trainable}\" selects no "
                          "parameters (e.g. parameter-free cosine heads); choose another trainable part")
    return count
