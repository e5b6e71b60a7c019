"""Predicting a split (batches sorted by length, one read-back at the end), scoring it against
its labels, the overall score, and the course-format prediction files. (The Evaluator, which
decides when a run evaluates and keeps the best, is evaluator.py.)"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import Tensor

from mtbert.base.atomic import replacing
from mtbert.base.errors import WriteError
from mtbert.model.build import Task
from mtbert.data.splits import Split, eval_batches


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Move a batch to ``device``; to a GPU from pinned memory.

    A copy from ordinary (pageable) host memory makes the host wait for the
    GPU's queue, so the next step's Python work cannot overlap the current
    step's kernels; pinned memory (torch's caching host allocator, cheap
    after the first batches) lets the copy run asynchronously, as the Hugging
    Face Trainer's DataLoader(pin_memory=True) does.
    """
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def in_file_order(model, split: Split, batch_size: int, device: torch.device, pad_id: int, per_batch) -> Tensor:
    """``per_batch(batch)`` over the split's length-sorted batches, in eval mode, put back in file
    order on the CPU."""
    was_training = model.training
    model.eval()
    chunks, order = [], []
    for batch in eval_batches(split, batch_size, pad_id):
        batch = to_device(batch, device)
        chunks.append(per_batch(batch))
        order.append(batch["index"])
    model.train(was_training)
    values, index = torch.cat(chunks).cpu(), torch.cat(order).cpu()
    ordered = torch.empty_like(values)
    ordered[index] = values
    return ordered


def predict(model, task: str, split: Split, batch_size: int, device: torch.device, pad_id: int,
            autocast=contextlib.nullcontext) -> Tensor:
    """The head's predictions for every example of ``split``, in file order, on the CPU."""
    head = model.heads[task]

    def per_batch(batch):
        with autocast():
            return head.predict(model(task, batch))
    return in_file_order(model, split, batch_size, device, pad_id, per_batch)


@torch.no_grad()
def embed(model, task: str | None, split: Split, how, batch_size: int, device: torch.device, pad_id: int) -> Tensor:
    """Sentence vectors of every text of ``split`` as ``task``'s head makes them (``how``: a
    SentenceEmbedding), in order, float32 on the CPU."""
    import torch.nn.functional as F

    from mtbert.model.pooling import pool

    def per_batch(batch):
        vectors = pool(model.encode(task, batch), how.pooling).float()
        return F.normalize(vectors, dim=-1) if how.normalize else vectors
    return in_file_order(model, split, batch_size, device, pad_id, per_batch)


def score(task: Task, predictions: Tensor, labels: Tensor) -> dict[str, float]:
    return {name: metric(predictions, labels) for name, metric in task.metrics.items()}


def overall(tasks: dict[str, Task], scores: dict[str, dict[str, float]]) -> float:
    """Mean over tasks of each task's main (first) metric mapped to [0, 1].

    For SST accuracy, Quora accuracy and STS Pearson r this is the CS224N
    course's overall score (sst_acc + para_acc + (sts_r + 1) / 2) / 3.
    """
    values = [main_score(tasks[name], task_scores) for name, task_scores in scores.items()]
    return sum(values) / len(values)


def main_score(task: Task, scores: dict[str, float]) -> float:
    """The task's main (first) metric mapped to [0, 1]: what the overall score averages."""
    main, metric = next(iter(task.metrics.items()))
    return metric.normalized(scores[main])


def format_prediction(value) -> str:
    return str(int(value)) if isinstance(value, int) else f"{value:.6f}"


def write_predictions(path: Path, ids: list[str], predictions: Tensor, column: str) -> None:
    """The course's submission format: header ``id \\t <column>``, then ``<id> , <prediction>`` lines."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError("predictions", path, exc, training=False) from None
    with replacing(path, "predictions") as fp:
        fp.write(f"id \t {column} \n")
        for ident, value in zip(ids, predictions.tolist()):
            fp.write(f"{ident} , {format_prediction(value)} \n")
