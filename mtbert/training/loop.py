"""THE training loop, top to bottom.

One iteration of the loop is one optimizer step (docs/architecture.md, "The
step's timeline"):

1. **micro-batches**: ``train.accumulate`` of them, each the set of task
   batches the sampler names for it (the step contract): each task's forward,
   loss and regularizer penalties, the balancer's weighting, the gradient
   method's backward;
2. **the update**: gradients averaged across processes, the gradient
   method's ``finish``, clipping, the optimizer (skipped on the device when
   a loss or the gradient is not finite), the schedule, the regularizers'
   ``after_step`` and the balancer's ``after_step``; a skipped step is rolled
   back for all of them (mtbert/training/rollback.py);
3. **after the step**, in this order: log, the end of the epoch when the
   step ended one (the balancer's ``epoch_end``), evaluate, save the
   training state, stop (early stopping, SIGTERM).

The phase ends when its budget of optimizer steps is spent (tested in one
place, ``_budget_left``). Nothing in a step reads a value back from the
device: losses are summed there and read once per ``log_every`` steps.
What a step needs is handed to it (each batch's share of the global batch,
the representations a gradient method asks for, the statistics to log);
every stateful part of the run is saved and restored by name through one
protocol, ``state_dict`` / ``load_state_dict`` (``_stateful``).

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
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mtbert.base import distributed
from mtbert.base.atomic import write_file
from mtbert.model.build import build_model, build_tasks, make
from mtbert.plugin.making import call
from mtbert.runs.checkpoint import find_checkpoint, load_weights
from mtbert.training.counters import Counters
from mtbert.training.datafiles import DataFiles
from mtbert.data.splits import TaskStream
from mtbert.base.errors import CheckpointError, MtbertError, Stopped, TrainingError
from mtbert.training.prediction import to_device
from mtbert.training.evaluator import Evaluator
from mtbert.plugin.interfaces import LoopContext, TaskInfo
from mtbert.training.meter import Health, Meter
from mtbert.base.paths import expand
from mtbert.training.phaseparts import Balancers, PhaseParts, build_phase
from mtbert.config.phases import resolve_phases
from mtbert.plugin.registry import Registry
from mtbert.training.rollback import Rollback
from mtbert.runs.rundir import RunDir
from mtbert.training.runwriter import RunWriter
from mtbert.base.signals import StopRequest
from mtbert.config.spec import Spec
from mtbert.config.validation import of_options
from mtbert.runs.state import STATE_FORMAT, RandomState, load_state
from mtbert.training.statecheck import check_phase, check_state

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


def unique_names(components) -> list[str]:
    """Each component's name, with -2, -3 ... for a name that repeats (two SMART regularizers)."""
    seen: dict[str, int] = {}
    names = []
    for component in components:
        seen[component.name] = seen.get(component.name, 0) + 1
        names.append(component.name if seen[component.name] == 1 else f"{component.name}-{seen[component.name]}")
    return names


class Trainer:
    """Built from a spec (model, data: every data error is raised here, before
    any run directory exists); ``fit(run)`` trains into a run directory."""

    def __init__(self, spec: Spec, registry: Registry, progress: bool = True,
                 on_evaluation: Callable[[dict], None] | None = None):
        self.spec, self.registry = spec, registry
        # told each evaluation's record (a search prunes a hopeless run through ``self.stop``)
        self.on_evaluation = on_evaluation
        cfg = spec.train
        self.dist = distributed.group()  # one process, or one rank of a torchrun job
        self.show_bar = progress and sys.stderr.isatty() and self.dist.main
        if not self.dist.main:
            log.setLevel(logging.WARNING)  # one rank tells the story
        seed_everything(spec.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = choose_device(cfg.device)
        precision = cfg.precision
        if precision == "auto" and precision_for(self.device, precision) == "bf16" and not of_options(
                registry.get("encoders", spec.encoder.name).capability("supports_bf16", True), spec.encoder.options):
            log.warning("encoder %s does not run in bf16: training in fp32 (train.precision = \"auto\")",
                        spec.encoder.name)  # explicit "bf16" is refused at validation
            precision = "fp32"
        self.autocast = autocast_for(self.device, precision)
        self.model = build_model(spec, registry)
        self.context = LoopContext(self.device, precision_for(self.device, precision), cfg.accumulate,
                                   self.dist.world, self.dist.rank, self.dist.average,
                                   self.model.named_shared_parameters)
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
        self.regularizers = dict(zip(unique_names(spec.regularizers),
                                     (make(registry, r) for r in spec.regularizers)))
        for regularizer in self.regularizers.values():
            regularizer.setup(training, self.context)
        infos = {t: TaskInfo(self.tasks[t].weight, self.tasks[t].labels.kind) for t in training}
        self.balancers = Balancers(registry, self.phases, infos, self.context)

        self.counters = Counters()
        self.data = DataFiles(self.tasks)  # what --resume compares with the files read again
        self.evaluator = Evaluator(self.tasks, cfg.eval_batch_size, self.device, self.pad_id, self.autocast,
                                   cfg.early_stopping)
        self.meter = Meter(self.device, self.dist.average)
        self.health = Health(self.device)
        self.random = RandomState(self.dist)  # every rank's generators, in the training state
        self.rollback = Rollback(self.device)  # a skipped step never happened for the stateful parts
        self.stop = StopRequest()
        self.parts: PhaseParts | None = None  # the phase being trained
        self.writer: RunWriter | None = None  # set by fit: where the run goes
        self.saved_at = -1  # the step of the last training state written
        self.state_path = None  # the training state being resumed (named in messages)

    @property
    def step(self) -> int:
        return self.counters.step

    # -- the run ----------------------------------------------------------------------
    def fit(self, run: RunDir, resume: bool = False) -> dict | None:
        """Train into ``run``; with ``resume``, continue from the run's saved state. Every way out
        (finished, stopped by a signal, too many non-finite steps, an error) closes the writer here."""
        if self.dist.main:
            run.lock()  # one writer at a time (the command line took it already, before reading data)
        try:
            state = self._read_state(run) if resume else None
            if state is not None:
                self.counters.load_state_dict(state["counters"])
                self.evaluator.load_state_dict(state["evaluator"])
                if self.counters.finished:
                    log.info("%s already finished at step %d; nothing to do", run.path, self.step)
                    return self.evaluator.best
            self.model.train()
            try:
                with self.stop.on_sigterm():
                    for phase in self.phases[self.counters.phase:]:
                        self.prepare_phase(phase, state)
                        self._open(run, state)  # after the state was restored whole: only then is the run touched
                        state = None
                        self._train_phase()
                if state is not None:  # resumed after the last phase had finished: only the final steps remain
                    self._load(state, only=("model", "balancers"))
                self._open(run, state)
                self._finish()
            finally:
                if self.writer is not None:
                    self.writer.close()
        finally:
            run.unlock()
        self.dist.barrier()
        return self.evaluator.best

    def _open(self, run: RunDir, state: dict | None) -> None:
        """The run's writer, once: a resumed run first drops the evaluations logged after its state."""
        if self.writer is not None:
            return
        if state is not None and self.dist.main:
            drop_later_evaluations(run, state["counters"]["step"])
        self.writer = RunWriter(run, self.dist.main, purge_step=self.step + 1 if state else None)

    def _finish(self) -> None:
        """After the last phase: the last step's state, the final evaluation, the test predictions (of
        the best checkpoint; the model keeps the last step's weights on every rank), a finished state."""
        self.counters.phase = len(self.phases)
        self._save_state()
        epoch = self.counters.epoch
        if self.evaluator.evaluated_at != self.step:
            self._evaluate(epoch)
        self.writer.test_predictions(self.model, self.balancers.modules, self.evaluator, {"step": self.step, "epoch": epoch})
        self.counters.finished = True
        self._save_state()

    def prepare_phase(self, phase, state: dict | None = None) -> PhaseParts:
        """Build the phase's parts; from ``state`` (after they were set up), restore them."""
        self.parts = parts = build_phase(self.spec, self.registry, self.model, phase, self.streams,
                                         self.balancers, self.context)
        self.model.zero_grad(set_to_none=True)
        self.meter.restart()
        if state is None:
            self.counters.start_phase(parts.phase.index)
            self.evaluator.new_phase()
            self.health.reset()
        else:
            check_phase(state, parts, self.state_path)  # the optimizer's and method's state fit this phase
            self._load(state)  # the random generators last: nothing may draw before the next step
        log.info("%s on %s: %d epoch(s), %d optimizer steps, tasks %s, sampler %s, %s trainable (%s params)%s",
                 parts.phase.name if len(self.phases) > 1 else self.spec.name, self.device, parts.epochs,
                 parts.total, ", ".join(parts.phase.tasks), parts.phase.sampler.name, parts.phase.trainable,
                 count(parts.trainable_count), f"; resuming at step {self.step}" if state else "")
        return parts

    # -- a phase: one iteration is one optimizer step ------------------------------------------
    def _train_phase(self) -> None:
        parts, c = self.parts, self.counters
        name = parts.phase.name
        bar = tqdm(total=parts.total, initial=self.step - c.phase_start, desc=name, disable=not self.show_bar,
                   dynamic_ncols=True, leave=False)
        try:
            for micro_batches, ended, position in self._steps():
                stats = self.optimizer_step(micro_batches)
                c.epoch, c.index = position  # where the next step starts
                bar.update(1)
                bar.set_description(f"{name} epoch {c.epoch}/{parts.epochs}")
                if self._after_step(stats, ended, bar):
                    break
        finally:
            bar.close()

    @property
    def finishing(self) -> bool:
        """Whether the step just taken was the run's last (its last phase's budget is spent): an
        evaluation there is the final one, and stopping after it saves nothing."""
        return self.parts is not None and self.counters.phase == len(self.phases) - 1 and not self._budget_left()

    def _budget_left(self) -> bool:
        """Whether the phase has optimizer steps left: the one test of its budget."""
        return self.step - self.counters.phase_start < self.parts.total

    def _steps(self):
        """The phase's optimizer steps from where the counters are: (the step's micro-batches, each a
        list of tasks; the epoch the step ended, or None; (epoch, index) where the next step starts).
        ``train.accumulate`` micro-batches of the sampler's plans each; a step that the end of an
        epoch cuts continues in the next epoch's plan, and that epoch's end comes after it. The
        counters move on only once a step is done; they stay on the phase's last epoch once it
        ends (the budget is spent then)."""
        parts, c, accumulate = self.parts, self.counters, self.spec.train.accumulate
        plan, planned = None, None
        while self._budget_left():
            epoch, index = c.epoch, c.index
            micro_batches, ended = [], None
            while len(micro_batches) < accumulate:
                if planned != epoch:
                    plan, planned = parts.sampler.plan(epoch), epoch
                if index >= len(plan):  # the last epoch is used up
                    return
                micro_batches.append(plan[index])
                index += 1
                if index == len(plan):
                    ended = epoch
                    if epoch == parts.epochs:
                        break
                    epoch, index = epoch + 1, 0
            if len(micro_batches) < accumulate:  # the last epoch ended inside a step: no update for a part
                return
            yield micro_batches, ended, (epoch, index)

    def optimizer_step(self, micro_batches: list[list[str]]) -> dict:
        """One optimizer step: ``micro_batches`` (each the tasks of one micro-batch), then the update.
        Returns the gradient method's statistics (device values, read at logging steps)."""
        self.rollback.snapshot(self._step_parts())
        for tasks in micro_batches:
            self._micro_batch(tasks)
        return self._update()

    def _micro_batch(self, tasks: list[str]) -> None:
        parts = self.parts
        scale = self.dist.world / self.spec.train.accumulate
        wants = getattr(parts.gradient, "needs_representations", False)
        losses, shares, representations = {}, {}, {}
        for task in tasks:
            batch, shares[task] = self.streams[task].take()  # share: this rank's part of the global batch
            batch = to_device(batch, self.device)
            with self.autocast():
                output = self.model(task, batch, representation=representations.setdefault(task, [])
                                    if wants else None)
                loss = self.tasks[task].loss(output, batch["labels"])
                for regularizer in self.regularizers.values():
                    loss = loss + regularizer.penalty(self.model, task, batch, output)
            losses[task] = loss
            self.meter.add(task, loss, len(batch["labels"]))
        weighted = parts.balancer.weigh(losses)
        # scaled so that the average across ranks and micro-batches is the loss of the whole global batch
        scaled = {t: loss * (shares[t] * scale) for t, loss in weighted.items()}
        if wants:
            parts.gradient.backward(scaled, representations=representations)
        else:
            parts.gradient.backward(scaled)

    def _update(self) -> dict:
        parts = self.parts
        losses = self.meter.step_means()
        # any rank's non-finite loss marks the step on every rank: the flag rides the gradients' all-reduce
        lost = torch.stack([(~torch.isfinite(v)).any() for v in losses.values()]).any().float().reshape(1)
        self.dist.average([p.grad for p in parts.trainable + parts.balancer_params] + [lost])
        stats = parts.gradient.finish()
        max_norm = self.spec.train.max_grad_norm
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(parts.trainable, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in parts.trainable if p.grad is not None])
        bad = self._skipped(norm, lost[0])
        if parts.optimizer.defaults.get("fused"):
            # torch's fused optimizers skip the update on the device when told so through found_inf, the
            # attribute torch's own GradScaler sets: no sync
            parts.optimizer.found_inf = bad.float()
            parts.optimizer.step()
        elif not bad.item():  # other optimizers: one read-back per step
            parts.optimizer.step()
        self.health.record(bad)
        parts.scheduler.step()
        parts.optimizer.zero_grad(set_to_none=True)
        for regularizer in self.regularizers.values():
            regularizer.after_step(self.model)
        call(parts.balancer, "after_step", losses)
        self.rollback.restore_if(bad, self._step_parts())  # a skipped step never happened for them
        self.meter.end_step(bad)
        self.counters.step += 1
        return stats

    def _skipped(self, norm, lost) -> torch.Tensor:
        """Whether this step is skipped (a 0-d bool on the device): its gradient norm or a task's loss
        (on any rank) is not finite. Skipped steps are counted, and rolled back in ``_update``."""
        return ~torch.isfinite(norm) | (lost > 0)

    def _step_parts(self) -> dict:
        """What a step may change besides the model and the optimizer, by name (for the rollback)."""
        return {"gradient": self.parts.gradient, "balancer": self.parts.balancer,
                **{f"regularizers/{name}": r for name, r in self.regularizers.items()}}

    # -- after the step ------------------------------------------------------------------------
    def _after_step(self, stats: dict, ended: int | None, bar) -> bool:
        """In this order: log, the epoch's end (of the epoch this step ended, or of the phase's last
        step), evaluate, save the state, stop. True to end the phase (early stopping, or its budget
        spent)."""
        cfg = self.spec.train
        last = not self._budget_left()
        if last and ended is None:  # a phase whose budget ends inside an epoch ends that epoch with it
            ended = self.counters.epoch
        if self.step % cfg.log_every == 0 or last:
            self._check_finite()
        if self.step % cfg.log_every == 0:
            summary = self._log(stats)
            bar.set_postfix_str(summary)
            if not self.show_bar:  # in a log file, a line per interval instead of a bar
                log.info("step %d (%s epoch %d/%d): %s", self.step, self.parts.phase.name,
                         self.counters.epoch, self.parts.epochs, summary)
        if ended is not None:
            self._end_epoch(ended)
        stop = False
        if (cfg.eval_every and self.step % cfg.eval_every == 0) or (cfg.eval_every is None and ended is not None):
            stop = self._evaluate(ended if ended is not None else self.counters.epoch)
        if self._state_due(ended, last or stop):
            self._save_state()
        self._stop_if_asked()
        return stop or last

    def _check_finite(self) -> None:
        """Stop when train.max_bad_steps steps in a row had a non-finite loss or gradient.

        Read once per logging interval (the skipped steps changed nothing, so
        stopping a little late loses nothing); the best checkpoint on disk is
        from an evaluation before them and stays as it is."""
        limit = self.spec.train.max_bad_steps
        worst = int(self.health.most_bad_in_a_row)
        if limit and worst >= limit:
            raise TrainingError(
                f"{worst} steps in a row had a non-finite loss or gradient (up to step {self.step}; "
                f"{int(self.health.bad_steps)} in this phase); they were skipped and nothing was updated. "
                f"The best checkpoint so far is intact in {self.writer.run.checkpoint}.\n"
                "  fix: lower train.lr, keep train.max_grad_norm on, or check the data's labels")

    def _log(self, stats: dict) -> str:
        parts = self.parts
        others = {"train/skipped_nonfinite_steps": self.health.bad_steps,
                  **{f"gradient/{k}": v for k, v in stats.items()},
                  **{f"balancer/{k}": v for k, v in parts.balancer.stats().items()},
                  **{f"regularizer/{k}": v for r in self.regularizers.values() for k, v in r.stats().items()}}
        return self.meter.log(self.writer.tb, self.step, self.dist.world, parts.optimizer, others)

    def _end_epoch(self, epoch: int) -> None:
        """The balancer's epoch hook, with the epoch's mean losses over the steps that were kept; an
        epoch none of whose steps was kept for some task (a NaN mean) leaves the balancer as it was."""
        balancer = {"balancer": self.parts.balancer}
        means = self.meter.take_epoch_means()
        self.rollback.snapshot(balancer)
        self.parts.balancer.epoch_end(epoch, means)
        if means:
            self.rollback.restore_if(~torch.isfinite(torch.stack(list(means.values()))).all(), balancer)

    def _evaluate(self, epoch: int) -> bool:
        """Score every dev split; checkpoint a new best. Returns True to stop the phase early."""
        current = self.parts.phase if self.parts is not None else self.phases[-1]
        phase = current.name if len(self.phases) > 1 else None
        result = self.evaluator.evaluate(self.model, self.step, epoch, phase)
        if result is None:
            return False
        self.writer.evaluation(result.record)
        if self.on_evaluation is not None:
            self.on_evaluation(result.record)
        if result.improved:
            self.writer.best(result.record, self.model, self.balancers.modules, self.tasks, result.predictions)
        if self.parts is not None:
            self.parts.balancer.evaluation_end(result.record)
        if result.stop:
            log.info("early stopping %s: no better overall score in %d evaluations", phase or self.spec.name,
                     self.spec.train.early_stopping)
        return result.stop

    def _state_due(self, ended: int | None, phase_over: bool) -> bool:
        """A state is written every train.save_every steps, after the step that ends an epoch, and
        after a phase's last step; once per step."""
        every = self.spec.train.save_every
        due = ended is not None or phase_over or (every and self.step % every == 0)
        return bool(due) and self.step != self.saved_at

    def _stop_if_asked(self) -> None:
        """After a step, once SIGTERM came: save a state to resume from, and stop (exit 143).

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
        if self.saved_at != self.step:
            self._save_state()
        raise Stopped(f"{self.stop.signal or 'a stop request'} received: saved a resumable state at step "
                      f"{self.step} in {self.writer.run.state}.\n  continue with: mtbert run SPEC --resume "
                      f"{self.writer.run.path} (same spec and --set overrides)")

    # -- the training state (resume): every stateful part, by name, one protocol ----------------------
    def _stateful(self) -> dict:
        """Every part whose state a resumed run needs, by name, in the order they are restored (the
        random generators last). Each has ``state_dict()`` / ``load_state_dict(state)``; a gradient
        method or regularizer without them has no state."""
        parts = {"counters": self.counters, "data": self.data, "evaluator": self.evaluator, "model": self.model,
                 "balancers": self.balancers, "health": self.health, "meter": self.meter,
                 **{f"streams/{t}": s for t, s in self.streams.items()},
                 **{f"regularizers/{name}": r for name, r in self.regularizers.items()}}
        if self.parts is not None and self.counters.phase < len(self.phases):
            parts.update({"optimizer": self.parts.optimizer, "scheduler": self.parts.scheduler,
                          "gradient": self.parts.gradient})
        parts["random"] = self.random
        return {name: part for name, part in parts.items() if hasattr(part, "state_dict")}

    def _save_state(self) -> None:
        """Everything a resumed run needs, between two steps (every process takes part)."""
        tree = {"format": STATE_FORMAT, **{name: part.state_dict() for name, part in self._stateful().items()}}
        if self.dist.main:
            self.writer.state(tree)
        self.saved_at = self.step

    def _load(self, state: dict, only: tuple[str, ...] | None = None) -> None:
        for name, part in self._stateful().items():
            if (only is None or name in only) and name in state:
                try:
                    part.load_state_dict(state[name])
                except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
                    # what the checks before could not see; nothing of the run directory was touched yet
                    raise CheckpointError(f"the training state in {self.state_path} is damaged: {name}: {exc}\n"
                                          "  fix: resume from an earlier copy of the run, or start it again; "
                                          "the run directory was left as it was") from None
        self.saved_at = self.step

    def _read_state(self, run: RunDir) -> dict:
        """The saved state, checked against this run's parts before any of it is used."""
        self.state_path = run.state
        state = load_state(run.state)
        if isinstance(state, dict) and state.get("format") != STATE_FORMAT and "evaluator" in state:
            raise CheckpointError(f"the training state in {run.state} was written by another version of mtbert, "
                                  "whose states this one cannot continue; start the run again")
        if isinstance(state, dict) and isinstance(state.get("random"), list) and len(state["random"]) != self.dist.world:
            raise MtbertError(f"the run was saved by {len(state['random'])} process(es); resume it with as many "
                              f"(this is {self.dist.world})")
        check_state(state, {name: part.state_dict() for name, part in self._stateful().items()}, run.state,
                    len(self.phases), self.streams, self.dist.world)
        return state


def drop_later_evaluations(run: RunDir, step: int) -> None:
    """Keep metrics.jsonl's evaluations up to the resumed state's step; a line cut short (a process
    killed while appending it) goes too."""
    if not run.metrics.exists():
        return
    kept = []
    for line in run.metrics.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):
            log.warning("%s: dropped a damaged line (a process stopped while writing it)", run.metrics)
    write_file(run.metrics, "".join(kept), "the evaluations up to the resumed state", training=True)


def train(spec: Spec, registry: Registry, run: RunDir, progress: bool = True) -> dict | None:
    return Trainer(spec, registry, progress).fit(run)
