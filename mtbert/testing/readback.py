"""The no-read-back rule, checked on the CPU: what holds a GPU's training step back, recorded.

A training step must not read a value back from the device (``.item()``,
``bool()``, ``.tolist()``, a boolean-mask index, ``nonzero``, a
``torch.linalg`` solver that checks its result on the host...): on a GPU each
one makes the host wait for every kernel queued before it. CUDA's sync debug
mode catches them on a GPU machine; this records the same on the CPU, so a
plugin's author can hold a gradient method, balancer, loss or regularizer to
the rule in CI. A torch function mode follows which tensors would live on the
device in a GPU run (everything but what host code builds from Python values:
the batches before their copy, random orders drawn on a host generator) and
records every call that would wait. It cannot see copies from pageable memory.

    from mtbert.testing.readback import read_backs_in_steps
    assert read_backs_in_steps(trainer) == []      # trainer: an mtbert.train.Trainer, not yet fitted

``ReadBackRecorder`` is the mode itself (``with recorder: ...``, then
``recorder.read_backs``); ``Paused`` wraps host code whose tensors are the host's.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary


READ_BACKS = {  # each returns host values, or a result whose size the host must learn
    Tensor.item, Tensor.tolist, Tensor.numpy, Tensor.__bool__, Tensor.__float__, Tensor.__int__,
    Tensor.__index__, Tensor.cpu, Tensor.nonzero, torch.nonzero, Tensor.argwhere, torch.argwhere,
    Tensor.masked_select, torch.masked_select, Tensor.unique, torch.unique, Tensor.unique_consecutive,
    torch.unique_consecutive, Tensor.equal, torch.equal, Tensor.allclose, torch.allclose, torch.is_nonzero,
    Tensor.bincount, torch.bincount,
}
# Solvers and decompositions that check their result on the host (a singular matrix, no
# convergence): on CUDA each waits for the GPU. Seen on an H200 for pinv, solve and eigh; the others
# share the same check in torch's source. (The *_ex variants with check_errors=False do not check.)
HOST_CHECKED = {
    torch.linalg.solve, torch.linalg.inv, torch.linalg.pinv, torch.linalg.eigh, torch.linalg.eigvalsh,
    torch.linalg.eig, torch.linalg.eigvals, torch.linalg.svd, torch.linalg.svdvals, torch.linalg.cholesky,
    torch.linalg.lstsq, torch.linalg.matrix_rank, torch.linalg.lu_factor, torch.linalg.tensorsolve,
    torch.linalg.tensorinv, torch.inverse, torch.pinverse, torch.svd, torch.cholesky,
}


def tensors(value):
    """The tensors in a call's arguments (one level of lists, tuples and dicts deep)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors(item)


class ReadBackRecorder(TorchFunctionMode):
    """Records read-backs of device tensors; ``host`` holds the tensors host code made."""

    def __init__(self):
        super().__init__()
        self.host = WeakIdKeyDictionary()
        self.read_backs: list[str] = []
        self.paused = False

    def is_host(self, value) -> bool:
        return isinstance(value, Tensor) and value in self.host

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused:
            return out
        inputs = list(tensors(args)) + list(tensors(kwargs))
        on_device = [t for t in inputs if not self.is_host(t)]
        if on_device and self.reads_back(func, args, kwargs):
            self.read_backs.append(getattr(func, "__name__", repr(func)))
        # Where the output would live in a GPU run. On the CPU a move may return its input
        # itself, so a move to "the device" takes that tensor off the host's list.
        if func is Tensor.cpu:
            on_host = True
        elif func is Tensor.cuda or (func is Tensor.to and self.moves(args, kwargs)):
            on_host = False
        elif inputs:
            on_host = not on_device
        else:
            on_host = "device" not in kwargs  # a factory without a device: the host
        for result in tensors(out):
            if on_host:
                self.host[result] = True
            else:
                self.host.pop(result, None)
        return out

    def moves(self, args, kwargs) -> bool:
        """Whether a Tensor.to call names a device (or another device tensor) to move to."""
        targets = list(args[1:]) + [kwargs.get("device"), kwargs.get("other")]
        return any(isinstance(t, (str, torch.device)) or (isinstance(t, Tensor) and not self.is_host(t))
                   for t in targets)

    @staticmethod
    def reads_back(func, args, kwargs) -> bool:
        if func in READ_BACKS or func in HOST_CHECKED:
            return True
        if func in (Tensor.__getitem__, Tensor.__setitem__, Tensor.index_put_, Tensor.index_put):
            return any(t.dtype == torch.bool for t in tensors(args[1]))  # a boolean mask: nonzero inside
        if func in (Tensor.repeat_interleave, torch.repeat_interleave):
            return isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), Tensor) \
                and kwargs.get("output_size") is None
        if func is torch.where:
            return len(args) + len(kwargs) == 1  # where(condition) is nonzero
        return False


class Paused:
    """Wraps host code (a stream's batch assembly) so that its tensors count as the host's."""

    def __init__(self, recorder, function):
        self.recorder, self.function = recorder, function

    def __call__(self, *args, **kwargs):
        self.recorder.paused = True
        try:
            out = self.function(*args, **kwargs)
        finally:
            self.recorder.paused = False
        for value in tensors(out):
            self.recorder.host[value] = True
        return out


def step_round(trainer):
    """The first phase prepared; each call of the result runs one round of optimizer steps (one
    all-tasks step under a sampler that puts every task in a step, else one step per task). Also:
    the steps per round."""
    trainer.prepare_phase(trainer.phases[0])
    tasks = list(trainer.phases[0].tasks)
    together = not getattr(trainer.parts.sampler, "one_task_per_step", True)
    step_tasks = [tasks] if together else [[t] for t in tasks]

    def run():
        for names in step_tasks:
            trainer.optimizer_step([names])
    return run, len(step_tasks)


def read_backs_in_steps(trainer, rounds: int = 1) -> list[str]:
    """A warm-up round of optimizer steps (first allocations, optimizer state, a teacher copy), then
    ``rounds`` recorded rounds: the names of the calls that read a device value back (empty: the
    steps keep the rule). ``trainer``: an ``mtbert.train.Trainer`` not yet fitted."""
    steps, _ = step_round(trainer)
    recorder = ReadBackRecorder()
    for stream in trainer.streams.values():
        stream.take = Paused(recorder, stream.take)
    steps()
    with recorder:
        for _ in range(rounds):
            steps()
    return recorder.read_backs
