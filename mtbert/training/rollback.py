"""A step the loop skips is a step that never happened, for every stateful part of it.

The loop skips an optimizer step whose gradient (or a task's loss) is not
finite: the fused optimizer is told to on the device, others are not called.
By then the step's other stateful parts have already taken it in: a gradient
method's running state (GradVac's target cosines, DB-MTL's running average,
Nash-MTL's weights), a balancer's (FAMO's logits and Adam moments, GradNorm's
first losses), a regularizer's (SMART's teacher). One non-finite value there
stays for the rest of the run. So the loop snapshots the tensors of their
state before each step and, after it, puts them back wherever the step was
skipped: one elementwise ``where`` per tensor, on the device, with nothing
read back, whatever the parts are. No part guards itself.

The contract, for a part's author (docs/plugins.md): what an update changes
lives in tensors on the loop's device that the part's ``state_dict()``
returns as they are (not copies; an ``nn.Module``'s buffers and parameters
are). Host values (a Python counter, a CPU generator's state) cannot be put
back without a read-back; the built-in parts keep none that a value reaches:
their host counters count steps as the learning-rate schedule does (skipped
ones too), and random draws advance as the data stream does.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


def live_tensors(prefix: str, state, device: torch.device) -> Iterator[tuple[str, Tensor]]:
    """(path, tensor) for every tensor on ``device`` in a nested state (dicts, lists, tuples)."""
    if isinstance(state, Tensor):
        if state.device == device:
            yield prefix, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from live_tensors(f"{prefix}/{key}", value, device)
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from live_tensors(f"{prefix}/{i}", value, device)


def part_tensors(parts: dict[str, object], device: torch.device) -> Iterator[tuple[str, Tensor]]:
    for name, part in parts.items():
        if hasattr(part, "state_dict"):
            yield from live_tensors(name, part.state_dict(), device)


class Rollback:
    """``snapshot(parts)`` before a step; ``restore_if(bad, parts)`` after it (``bad``: a 0-d bool
    tensor on the device). The snapshots live in tensors kept from step to step (a fresh
    allocation of a large state every step would cost more in page faults than the copy)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.shadows: dict[str, Tensor] = {}
        self.taken: set[str] = set()

    def snapshot(self, parts: dict[str, object]) -> None:
        self.taken = set()
        for path, tensor in part_tensors(parts, self.device):
            shadow = self.shadows.get(path)
            if shadow is None or shadow.shape != tensor.shape or shadow.dtype != tensor.dtype:
                shadow = self.shadows[path] = torch.empty_like(tensor)
            shadow.copy_(tensor)
            self.taken.add(path)

    def restore_if(self, bad: Tensor, parts: dict[str, object]) -> None:
        """Where ``bad``, every tensor snapshot is as it was; state that came into being during the
        step (no snapshot) is left as it is."""
        with torch.no_grad():
            for path, tensor in part_tensors(parts, self.device):
                shadow = self.shadows.get(path)
                if path in self.taken and shadow.shape == tensor.shape and shadow.dtype == tensor.dtype:
                    torch.where(bad, shadow, tensor, out=tensor)
