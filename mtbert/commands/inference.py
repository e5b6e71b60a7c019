"""Reload a finished run and predict with it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import attrs
import torch

from mtbert.model.build import label_spec, make, pair_encoding
from mtbert.data.splits import load_split
from mtbert.base.errors import MtbertError
from mtbert.training.prediction import predict, write_predictions
from mtbert.runs.finished import open_run
from mtbert.plugin.registry import Registry
from mtbert.config.spec import Spec


class Predictor:
    """A trained multitask model with its spec, ready to predict on files."""

    def __init__(self, spec: Spec, model, registry: Registry, device: torch.device):
        self.spec, self.model, self.registry, self.device = spec, model.eval(), registry, device
        tokenizer = model.encoder.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu", registry: Registry | None = None) -> "Predictor":
        torch_device = check_device(device)
        opened = open_run(run_dir, registry, str(torch_device))
        return cls(opened.spec, opened.model, opened.registry, torch_device)

    def predict_file(self, task: str, input_path: Path, output_path: Path, batch_size: int = 128) -> int:
        """Predict every row of ``input_path`` (the task's format) into a course-format file."""
        if task not in self.spec.tasks:
            raise MtbertError(f"unknown task {task!r}; this run has: {', '.join(self.spec.tasks)}")
        if not Path(input_path).is_file():
            raise MtbertError(f"input file {input_path} not found")
        if Path(output_path).exists() and Path(output_path).resolve() == Path(input_path).resolve():
            raise MtbertError(f"--output {output_path} is the input file: writing the predictions there would "
                              "destroy it; choose another --output (nothing was changed)")
        if batch_size < 1:
            raise MtbertError(f"batch size {batch_size}: give 1 or more")
        task_spec = self.spec.tasks[task]
        reader = make(self.registry, task_spec.data.reader)
        columns = attrs.evolve(task_spec.data, limit=None)  # a spec's row limit is for training files
        split = load_split(task, "input", Path(input_path), reader, columns,
                           label_spec(self.registry, task_spec.head), self.model.encoder.tokenizer,
                           self.spec.data.max_length, pair_encoding(self.registry, task_spec.head), labeled=False)
        values = predict(self.model, task, split, batch_size, self.device, self.pad_id, contextlib.nullcontext)
        write_predictions(Path(output_path), split.ids, values, task_spec.prediction_column)
        return len(split)


def check_device(device: str) -> torch.device:
    """``device`` as a torch device that is here, or a message that says what is."""
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise MtbertError(f"device {device!r} is not a torch device ({exc}); use \"cpu\" or \"cuda\"") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise MtbertError(f"device {device!r} asked for, but no CUDA device is available; use \"cpu\"")
    if torch_device.type == "cuda" and (torch_device.index or 0) >= torch.cuda.device_count():
        raise MtbertError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if torch_device.type not in ("cpu", "cuda", "mps"):
        raise MtbertError(f"device {device!r}: mtbert predicts on \"cpu\" or \"cuda\"")
    return torch_device
