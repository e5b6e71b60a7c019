"""THE training loop, top to bottom.

One training step is the set of task batches the sampler names for it (the
step contract, docs/architecture.md): the loop computes each task's loss
(plus regularizer terms), hands ``{task: loss}`` and the shared parameters to
the gradient method, and every ``accumulate`` steps clips, steps the
optimizer and the schedule. Evaluation runs each epoch (or every
``eval_every`` optimizer steps); the best overall score is checkpointed.
Nothing in the step loop reads a value back from the device: losses are
summed on the device and read once per ``log_every`` steps.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import random
import sys
import time

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from . import distributed
from .build import build_model, build_tasks, make, param_groups
from .checkpoint import find_checkpoint, load_weights, save_checkpoint
from .data import TaskStream
from .errors import MtbertError, TrainingError
from .evaluate import overall, predict, score, to_device, write_predictions
from .interfaces import SamplerContext
from .paths import expand
from .phases import Phase, resolve_phases, set_trainable
from .registry import Registry
from .rundir import RunDir
from .spec import Spec
from .state import load_state, rng_state, save_state, set_rng_state

log = logging.getLogger("mtbert")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def choose_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise MtbertError("train.device = \"cuda\" but no CUDA device is available; use \"auto\" or \"cpu\"")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def count(n: int) -> str:
    """A parameter count people can read: 22.7M, 7.7k, 96."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA (precision auto or bf16); fp32 everywhere else."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)


class Trainer:
    """Built from a spec (model, data: every data error is raised here, before
    any run directory exists); ``fit(run)`` trains into a run directory."""

    def __init__(self, spec: Spec, registry: Registry, progress: bool = True):
        self.spec, self.registry = spec, registry
        self.dist = distributed.group()  # one process, or one rank of a torchrun job
        self.show_bar = progress and sys.stderr.isatty() and self.dist.main
        if not self.dist.main:
            log.setLevel(logging.WARNING)  # one rank tells the story
        cfg = spec.train
        seed_everything(spec.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = choose_device(cfg.device)
        self.autocast = autocast_for(self.device, cfg.precision)

        self.model = build_model(spec, registry)
        if spec.init_from is not None:  # e.g. heads trained by an earlier run (report 001's transfer)
            load_weights(self.model, find_checkpoint(expand(spec.init_from)))
            log.info("weights from %s", spec.init_from)
        tokenizer = self.model.encoder.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.tasks = build_tasks(spec, registry, tokenizer)  # reads and checks all data before training
        self.model.to(self.device)
        if cfg.compile:  # the forward only: module names (and checkpoints) stay as they are
            self.model.encoder.forward = torch.compile(self.model.encoder.forward, dynamic=True)
        if self.dist.world > 1:  # same weights on every rank, but each rank its own dropout masks
            torch.manual_seed(spec.seed + 1_000_003 * self.dist.rank)

        training = [t for t, parts in self.tasks.items() if "train" in parts.splits]
        if not training:
            raise MtbertError("no task has a train file; nothing to train (give tasks.<name>.data.train)")
        self.streams = {t: TaskStream(self.tasks[t].splits["train"], cfg.batch_size, spec.seed + i,
                                      self.pad_id, cfg.length_buckets, self.dist.rank, self.dist.world)
                        for i, t in enumerate(training)}
        self.phases = resolve_phases(spec)
        self.regularizers = [make(registry, r) for r in spec.regularizers]

        self.step = 0  # optimizer updates so far, over all phases
        self.best: dict | None = None
        self.evals_since_best = 0
        self.evaluated_at = -1
        self.saved_at = -1
        self.started = time.perf_counter()

    def _plan_budget(self, phase: Phase):
        """(sampler, epochs, optimizer updates) of a phase, from its epochs or steps."""
        accumulate = self.spec.train.accumulate
        sizes = {t: len(self.streams[t].split) for t in phase.tasks}
        batches = {t: self.streams[t].batches_per_pass for t in phase.tasks}

        def sampler_for(epochs):
            return make(self.registry, phase.sampler, SamplerContext(sizes, batches, epochs, self.spec.seed))

        if phase.steps is None:
            sampler = sampler_for(phase.epochs)
            return sampler, phase.epochs, max(1, phase.epochs * sampler.steps_per_epoch() // accumulate)
        epochs = math.ceil(phase.steps * accumulate / sampler_for(1).steps_per_epoch())
        return sampler_for(epochs), epochs, phase.steps

    # -- the loop ---------------------------------------------------------------------
    def fit(self, run: RunDir, resume: bool = False) -> dict | None:
        """Train into ``run``; with ``resume``, continue from the run's saved state."""
        self.run = run
        state = self._read_state() if resume else None
        self.writer = (SummaryWriter(str(self.run.tb), purge_step=state["step"] + 1 if state else None)
                       if self.dist.main else NullWriter())
        self.model.train()
        for phase in self.phases:
            if state is not None and phase.index < state["phase"]:
                continue
            self._run_phase(phase, state if state is not None and phase.index == state["phase"] else None)
            state = None
        if state is not None:  # resumed after the last phase had finished
            self.model.load_state_dict(state["model"])
            self._restore_counters(state)
        self._save_state(len(self.phases), 0, 0, self.step)
        if self.evaluated_at != self.step:
            self._evaluate()
        self._finish()
        self.writer.close()
        self.dist.barrier()
        return self.best

    def _prepare_phase(self, phase: Phase) -> tuple[int, int, int]:
        """Freeze, build the phase's sampler, optimizer, schedule and gradient method;
        returns (epochs, optimizer steps, trainable parameter count)."""
        self.phase = phase
        trainable = set_trainable(self.model, phase)
        self.sampler, epochs, total = self._plan_budget(phase)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make(self.registry, self.spec.optimizer, param_groups(self.model, phase.lr, phase.head_lr))
        self.scheduler = make(self.registry, self.spec.scheduler, self.optimizer, total)
        self.gradient = make(self.registry, phase.gradient)
        shared = self.model.named_shared_parameters()
        shared_ids = {id(p) for _, p in shared}
        self.gradient.average = self.dist.average  # for gradients a method keeps outside .grad
        self.gradient.setup(shared, [p for p in self.trainable if id(p) not in shared_ids], phase.tasks)
        self.model.zero_grad(set_to_none=True)
        self.micro, self.grad_stats, self.evals_since_best = 0, {}, 0
        self._reset_meter()
        self.bad_steps = torch.zeros((), dtype=torch.long, device=self.device)
        self.bad_in_a_row, self.most_bad_in_a_row = self.bad_steps.clone(), self.bad_steps.clone()
        return epochs, total, trainable

    def _run_phase(self, phase: Phase, state: dict | None = None) -> None:
        cfg = self.spec.train
        epochs, total, trainable = self._prepare_phase(phase)
        start, first_epoch, skip = self.step, 1, 0
        if state is not None:
            start, first_epoch, skip = state["phase_start"], state["epoch"], state["index"]
            self._restore(state)
        log.info("%s on %s: %d epoch(s), %d optimizer steps, tasks %s, sampler %s, %s trainable (%s params)%s",
                 phase.name if len(self.phases) > 1 else self.spec.name, self.device, epochs, total,
                 ", ".join(phase.tasks), phase.sampler.name, phase.trainable, count(trainable),
                 f"; resuming at step {self.step}" if state else "")
        for epoch in range(first_epoch, epochs + 1):
            self.epoch = epoch
            plan = self.sampler.plan(epoch)
            bar = tqdm(total=len(plan), initial=skip, desc=f"{phase.name} epoch {epoch}/{epochs}",
                       disable=not self.show_bar, dynamic_ncols=True, leave=False)
            stop = False
            for index in range(skip, len(plan)):
                if self.micro % cfg.accumulate == 0 and self._state_due(index):
                    self._save_state(phase.index, epoch, index, start)
                self._train_step(plan[index])
                bar.update(1)
                if self.micro % cfg.accumulate:
                    continue
                self._update()
                if self.step % cfg.log_every == 0 or self.step - start >= total:
                    self._check_finite()
                if self.step % cfg.log_every == 0:
                    summary = self._log()
                    bar.set_postfix_str(summary)
                    if not self.show_bar:  # in a log file, a line per interval instead of a bar
                        log.info("step %d (%s epoch %d/%d): %s", self.step, phase.name, epoch, epochs, summary)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    stop = self._evaluate()
                if stop or self.step - start >= total:
                    break
            bar.close()
            skip = 0
            if cfg.eval_every is None and self.evaluated_at != self.step:
                stop = self._evaluate() or stop
            if stop or self.step - start >= total:
                return

    def _check_finite(self) -> None:
        """Stop when train.max_bad_steps steps in a row had a non-finite loss or gradient.

        Read once per logging interval (the skipped steps changed nothing, so
        stopping a little late loses nothing); the best checkpoint on disk is
        from an evaluation before them and stays as it is."""
        limit = self.spec.train.max_bad_steps
        worst = int(self.most_bad_in_a_row)
        if limit and worst >= limit:
            self.writer.close()
            raise TrainingError(
                f"{worst} steps in a row had a non-finite loss or gradient (up to step {self.step}; "
                f"{int(self.bad_steps)} in this phase); they were skipped and nothing was updated. "
                f"The best checkpoint so far is intact in {self.run.checkpoint}.\n"
                "  fix: lower train.lr, keep train.max_grad_norm on, or check the data's labels")

    # -- training state (resume) -----------------------------------------------------------
    def _state_due(self, index: int) -> bool:
        """A state is written at each epoch's start and every train.save_every steps, once per step."""
        every = self.spec.train.save_every
        due = index == 0 or (every and self.step % every == 0)
        return bool(due) and self.step > 0 and self.step != self.saved_at

    def _save_state(self, phase: int, epoch: int, index: int, phase_start: int) -> None:
        def component_state(obj):
            return obj.state_dict() if hasattr(obj, "state_dict") else None

        rngs = self.dist.gather_objects(rng_state())
        if not self.dist.main:
            self.saved_at = self.step
            return
        save_state(self.run.state, {
            "phase": phase, "epoch": epoch, "index": index, "phase_start": phase_start, "step": self.step,
            "micro": self.micro, "best": self.best, "evals_since_best": self.evals_since_best,
            "evaluated_at": self.evaluated_at, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "gradient": component_state(self.gradient),
            "regularizers": [component_state(r) for r in self.regularizers],
            "streams": {t: s.state() for t, s in self.streams.items()}, "rng": rngs,
            "bad": [self.bad_steps, self.bad_in_a_row, self.most_bad_in_a_row],
        })
        self.saved_at = self.step

    def _read_state(self) -> dict:
        state = load_state(self.run.state)
        if len(state["rng"]) != self.dist.world:
            raise MtbertError(f"the run was saved by {len(state['rng'])} process(es); resume it with as many "
                              f"(this is {self.dist.world})")
        if not self.dist.main:
            return state
        with open(self.run.metrics, "a+", encoding="utf-8") as fp:  # drop evaluations after the state
            fp.seek(0)
            kept = [line for line in fp if json.loads(line)["step"] <= state["step"]]
            fp.seek(0)
            fp.truncate()
            fp.writelines(kept)
        return state

    def _restore_counters(self, state: dict) -> None:
        self.step, self.micro, self.best = state["step"], state["micro"], state["best"]
        self.evals_since_best, self.evaluated_at = state["evals_since_best"], state["evaluated_at"]
        self.saved_at = state["step"]

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for obj, saved in [(self.gradient, state["gradient"]), *zip(self.regularizers, state["regularizers"])]:
            if saved is not None:
                obj.load_state_dict(saved)
        for task, position in state["streams"].items():
            self.streams[task].restore(position)
        self.bad_steps, self.bad_in_a_row, self.most_bad_in_a_row = (t.to(self.device) for t in state["bad"])
        self._restore_counters(state)
        set_rng_state(state["rng"][self.dist.rank])  # last: nothing may draw random numbers before the step

    def _train_step(self, step_tasks: list[str]) -> None:
        losses = {}
        for task in step_tasks:
            parts = self.tasks[task]
            stream = self.streams[task]
            batch = to_device(stream.next_batch(), self.device)
            with self.autocast():
                output = self.model(task, batch)
                loss = parts.loss(output, batch["labels"])
                for regularizer in self.regularizers:
                    loss = loss + regularizer.penalty(self.model, task, batch, output)
            # stream.share: this rank's part of the global batch (1 in one process), so that the
            # average across ranks is the loss of the whole global batch
            losses[task] = loss * (parts.weight * stream.share * self.dist.world / self.spec.train.accumulate)
            self.loss_sum[task] = self.loss_sum.get(task, 0.0) + loss.detach().float()
            self.loss_count[task] = self.loss_count.get(task, 0) + 1
            self.examples += len(batch["labels"])
        self.gradient.backward(losses)
        self.micro += 1

    def _update(self) -> None:
        self.dist.average([p.grad for p in self.trainable])
        self.grad_stats = self.gradient.finish()
        max_norm = self.spec.train.max_grad_norm
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.trainable if p.grad is not None])
        # A non-finite loss makes the gradient norm non-finite: such a step is skipped and counted.
        bad = ~torch.isfinite(norm)
        if self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = bad.float()  # the fused kernels skip the update on the device, no sync
            self.optimizer.step()
        elif not bad.item():  # other optimizers: one read-back per step
            self.optimizer.step()
        self.bad_steps += bad
        self.bad_in_a_row = (self.bad_in_a_row + 1) * bad
        self.most_bad_in_a_row = torch.maximum(self.most_bad_in_a_row, self.bad_in_a_row)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for regularizer in self.regularizers:
            regularizer.after_step(self.model)
        self.step += 1

    # -- logging -------------------------------------------------------------------------
    def _reset_meter(self) -> None:
        self.loss_sum: dict[str, torch.Tensor] = {}
        self.loss_count: dict[str, int] = {}
        self.examples = 0
        self.meter_started = time.perf_counter()

    def _log(self) -> str:
        """Write the interval's scalars: every value kept on the device is read back at once, here."""
        elapsed = max(time.perf_counter() - self.meter_started, 1e-9)
        means = torch.stack([s / self.loss_count[t] for t, s in self.loss_sum.items()] +
                            [torch.tensor(float(self.examples), device=self.device)])
        self.dist.average([means])  # every rank's share of the batches: the global means
        others = {"train/skipped_nonfinite_steps": self.bad_steps,
                  **{f"gradient/{k}": v for k, v in self.grad_stats.items()},
                  **{f"regularizer/{k}": v for r in self.regularizers for k, v in r.stats().items()}}
        values = torch.cat([means] + [torch.as_tensor(v, device=self.device).float().reshape(1)
                                      for v in others.values()]).tolist()
        losses = dict(zip(self.loss_sum, values))
        self.examples = values[len(losses)] * self.dist.world
        steps = sum(self.loss_count.values())
        for task, value in losses.items():
            self.writer.add_scalar(f"train/loss/{task}", value, self.step)
            self.writer.add_scalar(f"sampler/share/{task}", self.loss_count[task] / steps, self.step)
        for group in self.optimizer.param_groups:
            self.writer.add_scalar(f"lr/{group.get('name', 'group')}", group["lr"], self.step)
        throughput = self.examples / elapsed
        self.writer.add_scalar("throughput/examples_per_s", throughput, self.step)
        for tag, value in zip(others, values[len(losses) + 1:]):
            self.writer.add_scalar(tag, value, self.step)
        self._reset_meter()
        return "loss " + " ".join(f"{t}={v:.3f}" for t, v in losses.items()) + f", {throughput:.0f} ex/s"

    # -- evaluation and checkpoints -----------------------------------------------------------
    def _evaluate(self) -> bool:
        """Score every dev split; checkpoint a new best. Returns True to stop the phase early."""
        self.evaluated_at = self.step
        epoch = self.epoch
        scores, predictions = {}, {}
        for name, parts in self.tasks.items():
            dev = parts.splits.get("dev")
            if dev is None:
                continue
            predictions[name] = predict(self.model, name, dev, self.spec.train.eval_batch_size, self.device,
                                        self.pad_id, self.autocast)
            scores[name] = score(parts, predictions[name], dev.labels)
        if not scores:
            return False
        # Every rank scores the whole dev set (same weights, same result); only the first writes.
        record = {"step": self.step, "epoch": epoch, "tasks": scores, "overall": overall(self.tasks, scores),
                  "elapsed_s": round(time.perf_counter() - self.started, 1)}
        if len(self.phases) > 1:
            record["phase"] = self.phase.name
        improved = self.best is None or record["overall"] > self.best["overall"]
        if self.dist.main:
            self._write_evaluation(record, predictions if improved else None)
        if improved:
            self.best, self.evals_since_best = record, 0
            return False
        self.evals_since_best += 1
        patience = self.spec.train.early_stopping
        if patience and self.evals_since_best >= patience:
            log.info("early stopping %s: no better overall score in %d evaluations", self.phase.name, patience)
            return True
        return False

    def _write_evaluation(self, record: dict, best_predictions: dict | None) -> None:
        self.run.append_metrics(record)
        for task, values in record["tasks"].items():
            for metric, value in values.items():
                self.writer.add_scalar(f"dev/{task}/{metric}", value, self.step)
        self.writer.add_scalar("dev/overall", record["overall"], self.step)
        log.info("step %d (epoch %d): overall %.4f  %s", self.step, record["epoch"], record["overall"],
                 "  ".join(f"{t}: " + ", ".join(f"{m} {v:.4f}" for m, v in s.items())
                           for t, s in record["tasks"].items()))
        if best_predictions is None:
            return
        save_checkpoint(self.model, self.run.checkpoint, {"step": self.step, "epoch": record["epoch"],
                                                          "overall": record["overall"]})
        self.run.write_best(record)
        for task, values in best_predictions.items():
            parts = self.tasks[task]
            write_predictions(self.run.predictions / f"{task}-dev-output.csv", parts.splits["dev"].ids,
                              values, parts.prediction_column)

    def _finish(self) -> None:
        """Test predictions from the best checkpoint (or the last weights when nothing was scored)."""
        if not self.dist.main:
            return
        if self.best is None:
            save_checkpoint(self.model, self.run.checkpoint, {"step": self.step, "epoch": self.epoch})
        else:
            load_weights(self.model, self.run.checkpoint)
        for name, parts in self.tasks.items():
            test = parts.splits.get("test")
            if test is not None:
                values = predict(self.model, name, test, self.spec.train.eval_batch_size, self.device,
                                 self.pad_id, self.autocast)
                write_predictions(self.run.predictions / f"{name}-test-output.csv", test.ids, values,
                                  parts.prediction_column)


class NullWriter:
    """What ranks other than the first write to TensorBoard: nothing."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def train(spec: Spec, registry: Registry, run: RunDir, progress: bool = True) -> dict | None:
    return Trainer(spec, registry, progress).fit(run)
