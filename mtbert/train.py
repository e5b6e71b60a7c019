"""THE training loop, top to bottom.

One training step is the set of task batches the sampler names for it (the
step contract, docs/architecture.md): the loop computes each task's loss
(plus regularizer terms), the balancer turns ``{task: loss}`` into weighted
losses, the gradient method turns those into gradients, and every
``accumulate`` steps the loop clips, steps the optimizer and the schedule.
Evaluation runs each epoch (or every ``eval_every`` optimizer steps); the best
overall score is checkpointed. Nothing in the step reads a value back from
the device: losses are summed on the device and read once per ``log_every``
steps.

The parts: :class:`~mtbert.phaseparts.PhaseParts` (what a phase trains
with), :class:`~mtbert.counters.Counters` (where the loop is),
:class:`~mtbert.evaluator.Evaluator` (scores, best, patience),
:class:`~mtbert.runwriter.RunWriter` (what goes to disk) and
:class:`~mtbert.meter.Meter` (what goes to TensorBoard).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .build import build_model, build_tasks, make
from .checkpoint import find_checkpoint, load_weights
from .counters import Counters
from .data import TaskStream
from .errors import CheckpointError, MtbertError, Stopped, TrainingError
from .evaluate import to_device
from .evaluator import Evaluator
from .interfaces import LoopContext, TaskInfo
from .meter import Health, Meter
from .paths import expand
from .phaseparts import Balancers, PhaseParts, build_phase
from .phases import resolve_phases
from .registry import Registry
from .rollback import Rollback
from .rundir import RunDir
from .runwriter import RunWriter
from .signals import StopRequest
from .spec import Spec
from .state import load_state, rng_state, set_rng_state

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


def precision_for(device: torch.device, setting: str) -> str:
    """bf16 on CUDA (precision auto or bf16) or when asked for; fp32 everywhere else."""
    return "bf16" if setting == "bf16" or (setting == "auto" and device.type == "cuda") else "fp32"


def autocast_for(device: torch.device, precision: str):
    """The step's autocast context factory for a train.precision setting."""
    if precision_for(device, precision) != "bf16":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)


class Trainer:
    """Built from a spec (model, data: every data error is raised here, before
    any run directory exists); ``fit(run)`` trains into a run directory."""

    def __init__(self, spec: Spec, registry: Registry, progress: bool = True):
        self.spec, self.registry = spec, registry
        cfg = spec.train
        self.dist = distributed.group()  # one process, or one rank of a torchrun job
        self.show_bar = progress and sys.stderr.isatty() and self.dist.main
        if not self.dist.main:
            log.setLevel(logging.WARNING)  # one rank tells the story
        seed_everything(spec.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = choose_device(cfg.device)
        self.autocast = autocast_for(self.device, cfg.precision)
        self.model = build_model(spec, registry)
        self.representations: dict = {}  # the micro-step's, for a gradient method that needs them
        self.context = LoopContext(self.device, precision_for(self.device, cfg.precision), cfg.accumulate,
                                   self.dist.world, self.dist.rank, self.dist.average,
                                   self.model.named_shared_parameters, lambda: self.representations)
        if spec.init_from is not None:  # e.g. heads trained by an earlier run (report 001's transfer)
            load_weights(self.model, find_checkpoint(expand(spec.init_from)))
            log.info("weights from %s", spec.init_from)
        tokenizer = self.model.encoder.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # reads and checks all data before training
        started = time.perf_counter()
        self.tasks = build_tasks(spec, registry, tokenizer, progress=self.show_bar, dist=self.dist)
        splits = [s for parts in self.tasks.values() for s in parts.splits.values()]
        log.info("data ready in %.1f s: %d split(s), %d example(s), %d mapped from the tokenized cache",
                 time.perf_counter() - started, len(splits), sum(len(s) for s in splits),
                 sum(s.cached for s in splits))
        self.model.to(self.device)
        if cfg.compile:  # the forward only: module names (and checkpoints) stay as they are
            self.model.encoder.forward = torch.compile(self.model.encoder.forward, dynamic=True,
                                                       mode=cfg.compile_mode)
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
        for regularizer in self.regularizers:
            regularizer.setup(training, self.context)
        infos = {t: TaskInfo(self.tasks[t].weight, self.tasks[t].labels.kind) for t in training}
        self.balancers = Balancers(registry, self.phases, infos, self.context)

        self.counters = Counters()
        self.evaluator = Evaluator(self.tasks, cfg.eval_batch_size, self.device, self.pad_id, self.autocast,
                                   cfg.early_stopping)
        self.meter = Meter(self.device, self.dist.average)
        self.health = Health(self.device)
        self.rollback = Rollback(self.device)  # a skipped step never happened for the stateful parts
        self.stop = StopRequest()
        self.parts: PhaseParts | None = None  # the phase being trained
        self.writer: RunWriter | None = None  # set by fit: where the run goes
        self.grad_stats: dict = {}  # the gradient method's statistics of the last step
        self.saved_at = -1  # the step of the last training state written

    @property
    def step(self) -> int:
        return self.counters.step

    # -- the loop ---------------------------------------------------------------------
    def fit(self, run: RunDir, resume: bool = False) -> dict | None:
        """Train into ``run``; with ``resume``, continue from the run's saved state."""
        state = self._read_state(run) if resume else None
        if state is not None:
            self.counters = Counters.restore(state)
            self.evaluator.load_state_dict(state["evaluator"])
            if self.counters.finished:
                log.info("%s already finished at step %d; nothing to do", run.path, self.step)
                return self.evaluator.best
        self.writer = RunWriter(run, self.dist.main, purge_step=self.step + 1 if state else None)
        self.model.train()
        with self.stop.on_sigterm():
            for phase in self.phases[self.counters.phase:]:
                self.prepare_phase(phase, state)
                state = None
                self._train_phase()
        if state is not None:  # resumed after the last phase had finished: only the final steps remain
            self._restore_model(state)
        self.counters.phase = len(self.phases)
        self._save_state()
        if self.evaluator.evaluated_at != self.step:
            self._evaluate()
        self.writer.finish(self.model, self.balancers.modules, self.evaluator,
                           {"step": self.step, "epoch": self.counters.epoch})
        self.counters.finished = True
        self._save_state()
        self.writer.close()
        self.dist.barrier()
        return self.evaluator.best

    def prepare_phase(self, phase, state: dict | None = None) -> PhaseParts:
        """Build the phase's parts; from ``state`` (after they were set up), restore them."""
        self.parts = parts = build_phase(self.spec, self.registry, self.model, phase, self.streams,
                                         self.balancers, self.context)
        self.model.zero_grad(set_to_none=True)
        self.grad_stats = {}
        self.meter.restart()
        if state is None:
            self.counters.start_phase(parts.phase.index)
            self.evaluator.new_phase()
            self.health.reset()
        else:
            self._restore(state)  # last: the RNG state is set for the very next step
        log.info("%s on %s: %d epoch(s), %d optimizer steps, tasks %s, sampler %s, %s trainable (%s params)%s",
                 parts.phase.name if len(self.phases) > 1 else self.spec.name, self.device, parts.epochs,
                 parts.total, ", ".join(parts.phase.tasks), parts.phase.sampler.name, parts.phase.trainable,
                 count(parts.trainable_count), f"; resuming at step {self.step}" if state else "")
        return parts

    def _train_phase(self) -> None:
        cfg, parts, c = self.spec.train, self.parts, self.counters
        name = parts.phase.name
        for epoch in range(c.epoch, parts.epochs + 1):
            c.epoch = epoch
            plan = parts.sampler.plan(epoch)
            bar = tqdm(total=len(plan), initial=c.index, desc=f"{name} epoch {epoch}/{parts.epochs}",
                       disable=not self.show_bar, dynamic_ncols=True, leave=False)
            stop = False
            for index in range(c.index, len(plan)):
                c.index = index
                if c.micro % cfg.accumulate == 0:  # a step boundary: the place to save and to stop
                    if self._state_due(index):
                        self._save_state()
                    self._stop_if_asked()
                    self.rollback.snapshot(self._stateful_parts())
                self._train_step(plan[index])
                bar.update(1)
                if c.micro % cfg.accumulate:
                    continue
                self._update()
                done = self.step - c.phase_start >= parts.total
                if self.step % cfg.log_every == 0 or done:
                    self._check_finite()
                if self.step % cfg.log_every == 0:
                    summary = self._log()
                    bar.set_postfix_str(summary)
                    if not self.show_bar:  # in a log file, a line per interval instead of a bar
                        log.info("step %d (%s epoch %d/%d): %s", self.step, name, epoch, parts.epochs, summary)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    stop = self._evaluate()
                if stop or done:
                    break
            bar.close()
            c.index = 0
            self._end_epoch(epoch)
            if cfg.eval_every is None and self.evaluator.evaluated_at != self.step:
                stop = self._evaluate() or stop
            if stop or self.step - c.phase_start >= parts.total:
                return

    def _train_step(self, step_tasks: list[str]) -> None:
        parts, scale = self.parts, self.dist.world / self.spec.train.accumulate
        keep = getattr(parts.gradient, "needs_representations", False)  # for context.representations()
        losses = {}
        for task in step_tasks:
            stream = self.streams[task]
            batch = to_device(stream.next_batch(), self.device)
            with self.autocast():
                output = self.model(task, batch, representation=self.representations.setdefault(task, [])
                                    if keep else None)
                loss = self.tasks[task].loss(output, batch["labels"])
                for regularizer in self.regularizers:
                    loss = loss + regularizer.penalty(self.model, task, batch, output)
            losses[task] = loss
            self.meter.add(task, loss, len(batch["labels"]))
        weighted = parts.balancer.weigh(losses)
        # stream.share: this rank's part of the global batch (1 in one process), so that the
        # average across ranks is the loss of the whole global batch
        parts.gradient.backward({t: loss * (self.streams[t].share * scale) for t, loss in weighted.items()})
        self.representations = {}
        self.counters.micro += 1

    def _update(self) -> None:
        parts = self.parts
        losses = self.meter.step_means()
        # any rank's non-finite loss marks the step on every rank: the flag rides the gradients' all-reduce
        lost = torch.stack([(~torch.isfinite(v)).any() for v in losses.values()]).any().float().reshape(1)
        self.dist.average([p.grad for p in parts.trainable + parts.balancer_params] + [lost])
        self.grad_stats = parts.gradient.finish()
        max_norm = self.spec.train.max_grad_norm
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(parts.trainable, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in parts.trainable if p.grad is not None])
        bad = self._skipped(norm, lost[0])
        if parts.optimizer.defaults.get("fused"):
            parts.optimizer.found_inf = bad.float()  # the fused kernels skip the update on the device, no sync
            parts.optimizer.step()
        elif not bad.item():  # other optimizers: one read-back per step
            parts.optimizer.step()
        self.health.record(bad)
        parts.scheduler.step()
        parts.optimizer.zero_grad(set_to_none=True)
        for regularizer in self.regularizers:
            regularizer.after_step(self.model)
        parts.balancer.step_end(losses)
        self.rollback.restore_if(bad, self._stateful_parts())  # a skipped step never happened for them
        self.meter.end_step(bad)
        self.counters.step += 1

    def _skipped(self, norm, lost) -> torch.Tensor:
        """Whether this step is skipped (a 0-d bool on the device): its gradient norm or a task's loss
        (on any rank) is not finite. Skipped steps are counted, and rolled back in ``_update``."""
        return ~torch.isfinite(norm) | (lost > 0)

    def _end_epoch(self, epoch: int) -> None:
        """The balancer's epoch hook, with the epoch's mean losses over the steps that were kept; an
        epoch none of whose steps was kept for some task (a NaN mean) leaves the balancer as it was."""
        balancer = {"balancer": self.parts.balancer}
        means = self.meter.take_epoch_means()
        self.rollback.snapshot(balancer)
        self.parts.balancer.epoch_end(epoch, means)
        if means:
            self.rollback.restore_if(~torch.isfinite(torch.stack(list(means.values()))).all(), balancer)

    def _stateful_parts(self) -> dict:
        """What a step may change besides the model and the optimizer, by name (for the rollback)."""
        parts = {"gradient": self.parts.gradient, "balancer": self.parts.balancer}
        parts.update({f"regularizer.{i}": r for i, r in enumerate(self.regularizers)})
        return parts

    def _check_finite(self) -> None:
        """Stop when train.max_bad_steps steps in a row had a non-finite loss or gradient.

        Read once per logging interval (the skipped steps changed nothing, so
        stopping a little late loses nothing); the best checkpoint on disk is
        from an evaluation before them and stays as it is."""
        limit = self.spec.train.max_bad_steps
        worst = int(self.health.most_bad_in_a_row)
        if limit and worst >= limit:
            self.writer.close()
            raise TrainingError(
                f"{worst} steps in a row had a non-finite loss or gradient (up to step {self.step}; "
                f"{int(self.health.bad_steps)} in this phase); they were skipped and nothing was updated. "
                f"The best checkpoint so far is intact in {self.writer.run.checkpoint}.\n"
                "  fix: lower train.lr, keep train.max_grad_norm on, or check the data's labels")

    def _log(self) -> str:
        parts = self.parts
        others = {"train/skipped_nonfinite_steps": self.health.bad_steps,
                  **{f"gradient/{k}": v for k, v in self.grad_stats.items()},
                  **{f"balancer/{k}": v for k, v in parts.balancer.stats().items()},
                  **{f"regularizer/{k}": v for r in self.regularizers for k, v in r.stats().items()}}
        return self.meter.log(self.writer.tb, self.step, self.dist.world, parts.optimizer, others)

    def _evaluate(self) -> bool:
        """Score every dev split; checkpoint a new best. Returns True to stop the phase early."""
        current = self.parts.phase if self.parts is not None else self.phases[-1]
        phase = current.name if len(self.phases) > 1 else None
        result = self.evaluator.evaluate(self.model, self.step, self.counters.epoch, phase)
        if result is None:
            return False
        self.writer.evaluation(result.record, self.model, self.balancers.modules, self.tasks,
                               result.predictions if result.improved else None)
        if self.parts is not None:
            self.parts.balancer.evaluation_end(result.record)
        if result.stop:
            log.info("early stopping %s: no better overall score in %d evaluations", phase or self.spec.name,
                     self.spec.train.early_stopping)
        return result.stop

    # -- stopping on request -----------------------------------------------------------------
    def _stop_if_asked(self) -> None:
        """At a step boundary after SIGTERM: save a state to resume from, and stop (exit 143).

        Every process must stop at the same step (saving gathers from all of
        them), so with several processes they agree at logging steps only,
        where the loop reads values back anyway."""
        if self.dist.world > 1:
            if self.step % self.spec.train.log_every:
                return
            flag = torch.tensor([1.0 if self.stop else 0.0], device=self.device)
            self.dist.average([flag])
            if not flag.item():
                return
        elif not self.stop:
            return
        self._save_state()
        self.writer.close()
        raise Stopped(f"{self.stop.signal or 'a stop request'} received: saved a resumable state at step "
                      f"{self.step} in {self.writer.run.state}.\n  continue with: mtbert run SPEC --resume "
                      f"{self.writer.run.path} (same spec and --set overrides)")

    # -- training state (resume) -----------------------------------------------------------
    def _state_due(self, index: int) -> bool:
        """A state is written at each epoch's start and every train.save_every steps, once per step."""
        every = self.spec.train.save_every
        due = index == 0 or (every and self.step % every == 0)
        return bool(due) and self.step > 0 and self.step != self.saved_at

    def _save_state(self) -> None:
        """Everything a resumed run needs, between two steps (every process takes part)."""
        rngs = self.dist.gather_objects(rng_state())
        parts = self.parts
        tree = {**self.counters.state(), "evaluator": self.evaluator.state_dict(),
                "model": self.model.state_dict(), "balancers": self.balancers.state_dict(),
                "regularizers": [component_state(r) for r in self.regularizers],
                "streams": {t: s.state() for t, s in self.streams.items()}, "rng": rngs,
                "health": self.health.state_dict(), "epoch_losses": self.meter.state_dict()}
        if parts is not None and self.counters.phase < len(self.phases):
            tree.update(optimizer=parts.optimizer.state_dict(), scheduler=parts.scheduler.state_dict(),
                        gradient=component_state(parts.gradient))
        self.writer.state(tree)
        self.saved_at = self.step

    def _read_state(self, run: RunDir) -> dict:
        state = load_state(run.state)
        if "evaluator" not in state:
            raise CheckpointError(f"the training state in {run.state} was written by an older mtbert, whose "
                                  "states this one cannot continue; start the run again")
        if len(state["rng"]) != self.dist.world:
            raise MtbertError(f"the run was saved by {len(state['rng'])} process(es); resume it with as many "
                              f"(this is {self.dist.world})")
        if self.dist.main and not state["finished"]:
            with open(run.metrics, "a+", encoding="utf-8") as fp:  # drop evaluations after the state
                fp.seek(0)
                kept = [line for line in fp if json.loads(line)["step"] <= state["step"]]
                fp.seek(0)
                fp.truncate()
                fp.writelines(kept)
        return state

    def _restore_model(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.balancers.load_state_dict(state["balancers"])
        self.saved_at = self.step

    def _restore(self, state: dict) -> None:
        """The components of the phase the state was taken in; they were set up first."""
        parts = self.parts
        self._restore_model(state)
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.scheduler.load_state_dict(state["scheduler"])
        for obj, saved in [(parts.gradient, state["gradient"]), *zip(self.regularizers, state["regularizers"])]:
            if saved is not None:
                obj.load_state_dict(saved)
        for task, position in state["streams"].items():
            self.streams[task].restore(position)
        self.health.load_state_dict(state["health"])
        self.meter.load_state_dict(state["epoch_losses"])
        set_rng_state(state["rng"][self.dist.rank])  # last: nothing may draw random numbers before the step


def component_state(obj):
    return obj.state_dict() if hasattr(obj, "state_dict") else None


def train(spec: Spec, registry: Registry, run: RunDir, progress: bool = True) -> dict | None:
    return Trainer(spec, registry, progress).fit(run)
