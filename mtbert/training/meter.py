"""What the loop measures between two log lines: losses, throughput, skipped steps.

Every value stays on the device until ``log``, which reads them all back at
once (one read-back per ``train.log_every`` steps, never one per step). The
meter also keeps each task's loss over the current optimizer step and over
the current epoch, which balancers are told at ``after_step`` / ``epoch_end``.
A step the loop skips (non-finite) counts in neither the logged losses nor
the epoch's: ``end_step(bad)`` folds the step in with a weight of 0 or 1 on
the device, so one NaN does not make an epoch's mean (and DWA's weights) NaN.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor


class LossSums:
    """Per-task sums of detached losses and their counts (ints, or tensors on the device)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int | Tensor] = {}

    def add(self, task: str, loss: Tensor, count: int | Tensor = 1) -> None:
        self.sums[task] = self.sums.get(task, 0.0) + loss
        self.counts[task] = self.counts.get(task, 0) + count

    def means(self) -> dict[str, Tensor]:
        return {t: s / self.counts[t] for t, s in self.sums.items()}


class Health:
    """Steps skipped for a non-finite loss or gradient: counted on the device, saved with the state."""

    def __init__(self, device: torch.device) -> None:
        zero = torch.zeros((), dtype=torch.long, device=device)
        self.bad_steps, self.bad_in_a_row, self.most_bad_in_a_row = zero, zero.clone(), zero.clone()

    def record(self, bad: Tensor) -> None:
        self.bad_steps = self.bad_steps + bad
        self.bad_in_a_row = (self.bad_in_a_row + 1) * bad
        self.most_bad_in_a_row = torch.maximum(self.most_bad_in_a_row, self.bad_in_a_row)

    def reset(self) -> None:
        """A new phase counts its own skipped steps."""
        self.__init__(self.bad_steps.device)

    def state_dict(self) -> list[Tensor]:
        return [self.bad_steps, self.bad_in_a_row, self.most_bad_in_a_row]

    def load_state_dict(self, state: list[Tensor]) -> None:
        device = self.bad_steps.device
        self.bad_steps, self.bad_in_a_row, self.most_bad_in_a_row = (t.to(device) for t in state)


class Meter:
    def __init__(self, device: torch.device, average) -> None:
        self.device, self.average = device, average  # average: the process group's collective
        self.step = LossSums()  # the optimizer step in progress (host counts)
        self.interval, self.epoch = LossSums(), LossSums()  # steps that were not skipped (device counts)
        self.drawn: dict[str, int] = {}  # batches drawn per task in the interval, skipped or not
        self.examples = 0
        self.started = time.perf_counter()

    def add(self, task: str, loss: Tensor, examples: int) -> None:
        self.step.add(task, loss.detach().float())
        self.drawn[task] = self.drawn.get(task, 0) + 1
        self.examples += examples

    def step_means(self) -> dict[str, Tensor]:
        """Each task's mean loss over the optimizer step in progress (this process's)."""
        return self.step.means()

    def end_step(self, bad: Tensor) -> None:
        """Fold the step into the interval's and the epoch's sums, with weight 0 where ``bad``."""
        kept = (~bad).float()
        for task, total in self.step.sums.items():
            value = torch.where(bad, 0.0, total)
            for sums in (self.interval, self.epoch):
                sums.add(task, value, kept * self.step.counts[task])
        self.step = LossSums()

    def take_epoch_means(self) -> dict[str, Tensor]:
        """Each task's mean training loss over the epoch that just ended, across processes (NaN for a
        task none of whose steps was kept); the epoch's sums restart."""
        means, self.epoch = self.epoch.means(), LossSums()
        if means:
            stacked = torch.stack(list(means.values()))
            self.average([stacked])
            means = dict(zip(means, stacked.unbind()))
        return means

    def state_dict(self) -> dict:
        """The epoch's loss sums so far (a state is taken mid-epoch; the interval and step restart)."""
        return {t: [s, self.epoch.counts[t]] for t, s in self.epoch.sums.items()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = LossSums()
        for task, (total, n) in state.items():  # n: a tensor, or an int in states of older versions
            self.epoch.sums[task] = total.to(self.device)
            self.epoch.counts[task] = torch.as_tensor(n, dtype=torch.float32).to(self.device)

    def restart(self) -> None:
        """A new phase: nothing carried over from the last one's partial interval, step or epoch."""
        self.__init__(self.device, self.average)

    def log(self, writer, step: int, world: int, optimizer, others: dict[str, Tensor | float]) -> str:
        """Write the interval's scalars (and ``others``: tag -> value) and start a new interval;
        returns the progress-bar summary. The single read-back of the interval is here."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        sums = self.interval
        means = torch.stack([s / sums.counts[t] for t, s in sums.sums.items()] +
                            [torch.tensor(float(self.examples), device=self.device)])
        self.average([means])  # every rank's share of the batches: the global means
        values = torch.cat([means] + [torch.as_tensor(v, device=self.device).float().reshape(1)
                                      for v in others.values()]).tolist()
        losses = dict(zip(sums.sums, values))
        examples = values[len(losses)] * world
        drawn = sum(self.drawn.values())
        for task, value in losses.items():
            writer.add_scalar(f"train/loss/{task}", value, step)
        for task, count in self.drawn.items():
            writer.add_scalar(f"sampler/share/{task}", count / drawn, step)
        for group in optimizer.param_groups:
            writer.add_scalar(f"lr/{group.get('name', 'group')}", group["lr"], step)
        throughput = examples / elapsed
        writer.add_scalar("throughput/examples_per_s", throughput, step)
        for tag, value in zip(others, values[len(losses) + 1:]):
            writer.add_scalar(tag, value, step)
        self.interval, self.drawn, self.examples, self.started = LossSums(), {}, 0, time.perf_counter()
        return "loss " + " ".join(f"{t}={v:.3f}" for t, v in losses.items()) + f", {throughput:.0f} ex/s"
