"""What one phase trains with, built in one piece: sampler, budget, optimizer, schedule,
gradient method and balancer (see mtbert/config/phases.py for what a phase is)."""

from __future__ import annotations

import math
from typing import Any

import attrs
from torch import nn

from mtbert.model.build import make, param_groups
from mtbert.plugin.interfaces import LoopContext, ParamGroup, SamplerContext, TaskInfo
from mtbert.config.phases import Phase, set_trainable


@attrs.frozen
class PhaseParts:
    phase: Phase
    sampler: Any
    epochs: int
    total: int  # optimizer updates of the phase
    trainable: list[nn.Parameter]  # the model's trainable parameters (clipped; averaged across processes)
    trainable_count: int
    balancer: Any
    balancer_params: list[nn.Parameter]  # averaged across processes, not clipped with the model's
    optimizer: Any
    scheduler: Any
    gradient: Any


def plan_budget(registry, phase: Phase, streams: dict, accumulate: int, seed: int):
    """(sampler, epochs, optimizer updates) of a phase, from its epochs or its steps."""
    sizes = {t: len(streams[t].split) for t in phase.tasks}
    batches = {t: streams[t].batches_per_pass for t in phase.tasks}

    def sampler_for(epochs):
        return make(registry, phase.sampler, SamplerContext(sizes, batches, epochs, seed))

    if phase.steps is None:
        sampler = sampler_for(phase.epochs)
        return sampler, phase.epochs, max(1, phase.epochs * sampler.steps_per_epoch() // accumulate)
    epochs = math.ceil(phase.steps * accumulate / sampler_for(1).steps_per_epoch())
    return sampler_for(epochs), epochs, phase.steps


def build_phase(spec, registry, model, phase: Phase, streams: dict, balancers: "Balancers",
                context: LoopContext) -> PhaseParts:
    """Freeze what the phase does not train, then make its parts (in the order their random draws expect)."""
    trainable_count = set_trainable(model, phase)
    sampler, epochs, total = plan_budget(registry, phase, streams, context.accumulate, spec.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    balancer = balancers.get(phase.balancer)
    balancer_params = [p for p in balancer.parameters() if p.requires_grad]
    groups = param_groups(model, phase.lr, phase.head_lr)
    if balancer_params:
        groups.append(ParamGroup(balancer_params, balancer.lr or phase.lr, decay=False, name="balancer"))
    optimizer = make(registry, spec.optimizer, groups)
    scheduler = make(registry, spec.scheduler, optimizer, total)
    gradient = make(registry, phase.gradient)
    shared = model.named_shared_parameters()
    shared_ids = {id(p) for _, p in shared}
    # the balancer's parameters are private: each task's weighted loss reaches them as any head's
    private = [p for p in trainable if id(p) not in shared_ids] + balancer_params
    gradient.setup(shared, private, phase.tasks, context)
    return PhaseParts(phase, sampler, epochs, total, trainable, trainable_count, balancer, balancer_params,
                      optimizer, scheduler, gradient)


class Balancers:
    """One balancer per distinct balancer spec of the run's phases, built and set up once, so that
    its learned state carries from phase to phase and is saved whole."""

    def __init__(self, registry, phases: list[Phase], tasks: dict[str, TaskInfo], context: LoopContext):
        self.by_spec: dict[str, str] = {}  # repr of the ComponentSpec (options may hold lists) -> key
        self.modules: dict[str, Any] = {}  # key -> balancer, in the order of first use
        for phase in phases:
            if repr(phase.balancer) in self.by_spec:
                continue
            key = phase.balancer.name if phase.balancer.name not in self.modules else \
                f"{phase.balancer.name}-{len(self.modules) + 1}"
            balancer = make(registry, phase.balancer)
            balancer.setup(tasks, context)
            balancer.to(context.device)
            self.by_spec[repr(phase.balancer)], self.modules[key] = key, balancer

    def get(self, component):
        return self.modules[self.by_spec[repr(component)]]

    def state_dict(self) -> dict:
        return {key: b.state_dict() for key, b in self.modules.items()}

    def load_state_dict(self, state: dict) -> None:
        for key, saved in state.items():
            self.modules[key].load_state_dict(saved)
