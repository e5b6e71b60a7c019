"""No host read-back in the training step or per evaluation batch, checked on the CPU (CI has no GPU).

tests/training/test_cuda.py runs training steps under CUDA's sync debug mode, which
only a GPU machine can do. This is the CPU's stand-in, the plugin kit's
``mtbert.testing.readback`` (the same check an outside plugin's author runs): a torch function mode
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

from mtbert.config.spec import structure_spec, unstructure
from mtbert.testing.readback import Paused, ReadBackRecorder, read_backs_in_steps
from mtbert.training.loop import Trainer

from helpers import toy_data, toy_spec, STEP_CASES


def toy_trainer(registry, tmp_path, changes):
    """The toy two-task run with ``changes`` (top-level spec keys; train keys go in ``train``)."""
    changes = dict(changes)
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data"), **changes.pop("train", {})))
    data.update(changes)
    return Trainer(structure_spec(data, registry), registry, progress=False)


@pytest.mark.parametrize("changes", [*STEP_CASES.values(), {"train": {"max_grad_norm": 0.0}}],
                         ids=[*STEP_CASES, "no_clipping"])
def test_training_steps_read_nothing_back_from_the_device(registry, tmp_path, changes):
    trainer = toy_trainer(registry, tmp_path, changes)
    assert read_backs_in_steps(trainer) == []
    assert trainer.step >= 2  # a warm-up round and a recorded one ran


def test_the_recorder_sees_a_read_back(registry, tmp_path):
    """The check can fail: a loss that reads its value back every step, as a hand-written loop
    that prints the loss does, is reported once per task and step."""
    trainer = toy_trainer(registry, tmp_path, {})
    for parts in trainer.tasks.values():
        def loss(output, labels, original=parts.loss):
            value = original(output, labels)
            value.item()
            return value
        parts.loss = loss
    assert read_backs_in_steps(trainer) == ["item", "item"]  # one step of each of the two tasks


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
    import mtbert.training.prediction as evaluate

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
