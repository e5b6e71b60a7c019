"""Data-parallel training over several processes, launched by ``torchrun``.

    torchrun --nproc_per_node 2 $(which mtbert) run SPEC

Every rank builds the same model from the same seed and follows the same
sampler plan (plans are pure functions of the seed), so every rank sees the
same task schedule. Each step's global batch of ``batch_size x world``
examples (the same shuffled order on every rank) is split into one shard per
rank, and before each optimizer step the gradients are averaged across
ranks with ``torch.distributed`` (gloo on the CPU, NCCL on GPUs), the loss of
each shard weighted by its share of the batch, so N processes with batch b
train exactly like one process with batch N x b.

Why not the ``DistributedDataParallel`` wrapper: it reduces the gradient of
one summed loss inside a single backward pass, while a multitask step runs
several forward passes (one per task), leaves other tasks' heads and
adapters unused, and gradient surgery (PCGrad, GradVac) needs each task's
gradient reduced separately before it projects them -- so the loop reduces
what each gradient method holds (``.grad`` and, for surgery, the per-task
rows) itself, with the same collectives DDP uses underneath.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Single:
    """One process: every collective is a no-op."""

    rank, world = 0, 1
    main = True

    def average(self, tensors: list[torch.Tensor]) -> None:
        pass

    def gather_objects(self, obj) -> list:
        return [obj]

    def broadcast_object(self, obj):
        return obj

    def barrier(self) -> None:
        pass


class Group(Single):
    """Several processes started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment)."""

    def __init__(self):
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.main = self.rank == 0
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)

    def average(self, tensors: list[torch.Tensor]) -> None:
        """Average tensors across ranks in place, in one flat all-reduce."""
        tensors = [t for t in tensors if t is not None]
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def gather_objects(self, obj) -> list:
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()


def group() -> Single:
    """The process group this process belongs to (a Single outside torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return Group()
    return Single()


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This rank's contiguous share of a global batch (sizes differ by at most one)."""
    size, extra = divmod(len(indices), world)
    start = rank * size + min(rank, extra)
    return indices[start:start + size + (1 if rank < extra else 0)]
