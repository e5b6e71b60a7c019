"""Dev evaluation for the loop: scores, the best evaluation so far, and patience."""

from __future__ import annotations

import time

import attrs

from mtbert.training.prediction import overall, predict, score


@attrs.frozen
class Evaluation:
    record: dict  # step, epoch, tasks' scores, overall (and phase): one line of metrics.jsonl
    predictions: dict  # task -> dev predictions
    improved: bool  # a new best overall score
    stop: bool  # patience ran out: the phase should stop


class Evaluator:
    def __init__(self, tasks: dict, eval_batch_size: int, device, pad_id: int, autocast, patience: int | None):
        self.tasks, self.batch_size, self.device, self.pad_id = tasks, eval_batch_size, device, pad_id
        self.autocast, self.patience = autocast, patience
        self.best: dict | None = None
        self.evals_since_best = 0
        self.evaluated_at = -1  # the step of the last evaluation
        self.started = time.perf_counter()
        self.earlier = 0.0  # seconds the run had trained before this process (a resumed run continues the clock)

    def elapsed(self) -> float:
        """Seconds of training so far, across ``--resume``."""
        return self.earlier + time.perf_counter() - self.started

    def predict(self, model, task: str, split):
        """The model's predictions of ``task`` on ``split``, as evaluation makes them."""
        return predict(model, task, split, self.batch_size, self.device, self.pad_id, self.autocast)

    def evaluate(self, model, step: int, epoch: int, phase: str | None) -> Evaluation | None:
        """Score every dev split at ``step``; None when no task has one."""
        self.evaluated_at = step
        scores, predictions = {}, {}
        for name, parts in self.tasks.items():
            dev = parts.splits.get("dev")
            if dev is None:
                continue
            predictions[name] = self.predict(model, name, dev)
            scores[name] = score(parts, predictions[name], dev.labels)
        if not scores:
            return None
        # Every rank scores the whole dev set (same weights, same result); only the first writes.
        record = {"step": step, "epoch": epoch, "tasks": scores, "overall": overall(self.tasks, scores),
                  "elapsed_s": round(self.elapsed(), 1)}
        if phase is not None:
            record["phase"] = phase
        improved = self.best is None or record["overall"] > self.best["overall"]
        if improved:
            self.best, self.evals_since_best = record, 0
        else:
            self.evals_since_best += 1
        stop = bool(self.patience) and self.evals_since_best >= self.patience
        return Evaluation(record, predictions, improved, stop)

    def new_phase(self) -> None:
        """Patience counts within a phase."""
        self.evals_since_best = 0

    def state_dict(self) -> dict:
        return {"best": self.best, "evals_since_best": self.evals_since_best, "evaluated_at": self.evaluated_at,
                "elapsed_s": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.evals_since_best = state["best"], state["evals_since_best"]
        self.evaluated_at = state["evaluated_at"]
        self.earlier, self.started = float(state.get("elapsed_s", 0.0)), time.perf_counter()  # older states: 0
