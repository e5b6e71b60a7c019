"""Everything the loop writes into the run directory, on the first process only.

metrics.jsonl and the dev scalars at each evaluation; the best checkpoint
(with the balancers' tensors), best.json and the dev predictions at each new
best; the test predictions at the end; the training state for ``--resume``.
Every write that can fail on a full disk fails as a :class:`WriteError`
naming the directory and what was being written, with the previous version
intact (see mtbert/base/atomic.py).
"""

from __future__ import annotations

import contextlib
import logging

from mtbert.runs.checkpoint import load_weights, save_checkpoint
from mtbert.base.errors import WriteError
from mtbert.training.prediction import write_predictions
from mtbert.runs.rundir import RunDir
from mtbert.runs.state import save_state

log = logging.getLogger("mtbert")


@contextlib.contextmanager
def writing(what: str, where):
    """An OS error (a full disk) while writing ``what`` becomes a message naming ``where``."""
    try:
        yield
    except OSError as exc:
        raise WriteError(what, where, exc) from None


class NullWriter:
    """What ranks other than the first write to TensorBoard: nothing."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


class RunWriter:
    def __init__(self, run: RunDir, main: bool, purge_step: int | None = None):
        self.run, self.main = run, main
        if main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run.tb), purge_step=purge_step)
        else:
            self.tb = NullWriter()

    def evaluation(self, record: dict) -> None:
        """One evaluation: its line in metrics.jsonl, its scalars, its log line."""
        if not self.main:
            return
        with writing("the evaluation's line", self.run.metrics):
            self.run.append_metrics(record)
        step = record["step"]
        for task, values in record["tasks"].items():
            for metric, value in values.items():
                self.tb.add_scalar(f"dev/{task}/{metric}", value, step)
        self.tb.add_scalar("dev/overall", record["overall"], step)
        log.info("step %d (epoch %d): overall %.4f  %s", step, record["epoch"], record["overall"],
                 "  ".join(f"{t}: " + ", ".join(f"{m} {v:.4f}" for m, v in s.items())
                           for t, s in record["tasks"].items()))

    def best(self, record: dict, model, balancers: dict, tasks: dict, predictions: dict) -> None:
        """A new best evaluation: the checkpoint, best.json and the dev predictions."""
        if not self.main:
            return
        self.checkpoint(model, balancers, {"step": record["step"], "epoch": record["epoch"],
                                           "overall": record["overall"]})
        with writing("the best evaluation and its dev predictions", self.run.path):
            self.run.write_best(record)
            for task, values in predictions.items():
                parts = tasks[task]
                write_predictions(self.run.predictions / f"{task}-dev-output.csv", parts.splits["dev"].ids,
                                  values, parts.prediction_column)

    def checkpoint(self, model, balancers: dict, meta: dict) -> None:
        extra = {f"balancers.{key}.{name}": tensor for key, balancer in balancers.items()
                 for name, tensor in balancer.state_dict().items() if hasattr(tensor, "shape")}
        save_checkpoint(model, self.run.checkpoint, meta, extra)

    def test_predictions(self, model, balancers: dict, evaluator, meta: dict) -> None:
        """Test predictions from the best checkpoint (or the last weights when nothing was scored).
        The best weights go into the model only for the predictions: it keeps the last step's
        weights afterwards, as on every other rank."""
        if not self.main:
            return
        if evaluator.best is None:
            self.checkpoint(model, balancers, meta)
        tests = {name: parts for name, parts in evaluator.tasks.items() if "test" in parts.splits}
        if not tests:
            return
        last = {k: v.detach().clone() for k, v in model.state_dict().items()} if evaluator.best is not None else None
        try:
            if last is not None:
                load_weights(model, self.run.checkpoint)
            for name, parts in tests.items():
                test = parts.splits["test"]
                values = evaluator.predict(model, name, test)
                with writing("the test predictions", self.run.predictions):
                    write_predictions(self.run.predictions / f"{name}-test-output.csv", test.ids, values,
                                      parts.prediction_column)
        finally:
            if last is not None:
                model.load_state_dict(last)

    def state(self, tree: dict) -> None:
        if self.main:
            save_state(self.run.state, tree)

    def close(self) -> None:
        self.tb.close()
