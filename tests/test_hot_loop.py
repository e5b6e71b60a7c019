"""No host read-back in the training step or per evaluation batch, checked on the CPU (CI has no GPU).

tests/test_cuda.py runs training steps under CUDA's sync debug mode, which
only a GPU machine can do. This is the CPU's stand-in: a torch function mode
follows which tensors would live on the device in a GPU run (everything but
what host code builds from Python values: the batches before their copy,
random orders drawn on a host generator) and records every call that would
make the host wait for the device: reading a device tensor's value
(``.item()``, ``bool()``, ``.tolist()``, ``.cpu()``...) or an operation whose
output size depends on a device tensor's values (``nonzero``, boolean-mask
indexing, ``unique``...) or a torch.linalg solver that checks its result on the
host (``solve``, ``pinv``, ``eigh``...). Unlike CUDA's mode it cannot see copies from
pageable memory; unlike it, it runs in CI on every change.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from mtbert.spec import structure_spec, unstructure
from mtbert.train import Trainer

from helpers import toy_data, toy_spec, STEP_CASES, step_round


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


def steps_under_recorder(registry, tmp_path, changes, tamper=None):
    """A warm-up round, then a recorded round, of the toy two-task run's steps; the recorder.
    ``changes`` are top-level spec keys (train keys go in ``train``); ``tamper(trainer)``
    runs before the steps."""
    changes = dict(changes)
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data"), **changes.pop("train", {})))
    data.update(changes)
    trainer = Trainer(structure_spec(data, registry), registry, progress=False)
    steps, per_round = step_round(trainer)
    if tamper is not None:
        tamper(trainer)
    recorder = ReadBackRecorder()
    for stream in trainer.streams.values():
        stream.take = Paused(recorder, stream.take)
    steps()  # warm-up: optimizer state, SMART's teacher copy
    with recorder:
        steps()
    assert trainer.step == 2 * per_round
    return recorder


@pytest.mark.parametrize("changes", [*STEP_CASES.values(), {"train": {"max_grad_norm": 0.0}}],
                         ids=[*STEP_CASES, "no_clipping"])
def test_training_steps_read_nothing_back_from_the_device(registry, tmp_path, changes):
    recorder = steps_under_recorder(registry, tmp_path, changes)
    assert recorder.read_backs == []


def test_the_recorder_sees_a_read_back(registry, tmp_path):
    """The check can fail: a loss that reads its value back every step, as a hand-written loop
    that prints the loss does, is reported once per task and step."""
    def read_back_each_loss(trainer):
        for parts in trainer.tasks.values():
            def loss(output, labels, original=parts.loss):
                value = original(output, labels)
                value.item()
                return value
            parts.loss = loss

    recorder = steps_under_recorder(registry, tmp_path, {}, tamper=read_back_each_loss)
    assert recorder.read_backs == ["item", "item"]  # one step of each of the two tasks


def test_host_values_are_not_read_backs():
    """Orders drawn on a host generator and read with .tolist() (as gradient surgery does)
    stay on the host in a GPU run; a value computed from a device tensor does not."""
    recorder = ReadBackRecorder()
    device_side = torch.ones(3)  # made before the recorder: as the model's weights are
    with recorder:
        torch.randperm(4, generator=torch.Generator().manual_seed(0)).tolist()
        torch.tensor([1.0, 2.0]).sum().item()
        (device_side * 2).sum()
        assert recorder.read_backs == []
        (device_side * 2).sum().item()
        device_side[device_side > 0]
    assert recorder.read_backs == ["item", "__getitem__"]


def test_host_checked_solvers_are_read_backs_and_the_toolkits_are_not():
    """torch.linalg.solve and eigh on a device matrix wait for the GPU (their checks); the
    toolkit's solve_spd and symmetric_eigen, which the gradient methods use instead, give the
    same answers without a check."""
    from mtbert.toolkit.smalllinalg import solve_spd, symmetric_eigen

    device_side = torch.tensor([[4.0, 1.0], [1.0, 3.0]])  # made before the recorder: a device tensor
    rhs = torch.tensor([1.0, 2.0])
    recorder = ReadBackRecorder()
    with recorder:
        ours = solve_spd(device_side[None], rhs[None])[0], symmetric_eigen(device_side[None])[0][0]
        assert recorder.read_backs == []
        theirs = torch.linalg.solve(device_side, rhs), torch.linalg.eigvalsh(device_side)
    assert len(recorder.read_backs) == 2 and "solve" in recorder.read_backs[0]
    assert torch.allclose(ours[0], theirs[0]) and torch.allclose(ours[1], theirs[1])


def test_prediction_reads_back_once_not_per_batch(registry, tmp_path, monkeypatch):
    """Evaluation keeps each batch's predictions on the device and reads them back at the
    end: two copies (predictions, their order) however many batches there are."""
    import mtbert.evaluate as evaluate

    trainer = Trainer(toy_spec(registry, toy_data(tmp_path / "data")), registry, progress=False)
    recorder = ReadBackRecorder()
    made = []  # the batches, assembled on the host
    original = evaluate.eval_batches
    monkeypatch.setattr(evaluate, "eval_batches", Paused(recorder, lambda *args: made.extend(original(*args)) or made))
    split = trainer.tasks["sent"].splits["dev"]
    with recorder:
        predictions = evaluate.predict(trainer.model, "sent", split, 4, trainer.device, trainer.pad_id)
    assert len(made) > 2 and predictions.shape[0] == len(split.labels)
    assert recorder.read_backs == ["cpu", "cpu"]
