"""The run directory: ``runs/<name>/`` with everything a run leaves behind.

    spec.toml        the resolved spec (every default filled in)
    metrics.jsonl    one JSON line per evaluation: step, epoch, tasks' metrics, overall
    best.json        the best evaluation so far
    tb/              TensorBoard event files
    checkpoint/      the best model (see mtbert/runs/checkpoint.py)
    predictions/     dev and test predictions in the course's submission format
    state/           the latest training state, for --resume (see mtbert/runs/state.py)

An existing run is never overwritten: without ``--out`` a new run of the same
name gets the first free ``<name>-2``, ``<name>-3`` ...; an explicit ``--out``
that already holds a run is an error.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

from mtbert.base.errors import MtbertError
from mtbert.config.spec import Spec, dump_spec


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def free_dir(default: Path, explicit: str | Path | None = None) -> Path:
    """``explicit`` if it holds nothing (else an error), or the first free ``default[-n]``."""
    if explicit is not None:
        path = Path(explicit)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise MtbertError(f"{path} already holds files; choose another --out (nothing was changed)")
        return path
    path, n = default, 1
    while path.exists() and (not path.is_dir() or any(path.iterdir())):
        n += 1
        path = default.with_name(f"{default.name}-{n}")
    return path


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.spec = self.path / "spec.toml"
        self.metrics = self.path / "metrics.jsonl"
        self.best = self.path / "best.json"
        self.tb = self.path / "tb"
        self.checkpoint = self.path / "checkpoint"
        self.predictions = self.path / "predictions"
        self.state = self.path / "state"

    @classmethod
    def create(cls, spec: Spec, out: str | Path | None = None) -> "RunDir":
        path = free_dir(Path(spec.out) / spec.name, out)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        run.spec.write_text(dump_spec(spec), encoding="utf-8")
        return run

    @classmethod
    def existing(cls, path: Path, spec: Spec) -> "RunDir":
        """A run directory to resume: it must have been made from this very spec."""
        run = cls(Path(path))
        if not run.spec.is_file():
            raise MtbertError(f"{run.path} is not an mtbert run directory (no spec.toml)")
        saved, now = run.spec.read_text(encoding="utf-8"), dump_spec(spec)
        if saved != now:
            diff = [line for line in difflib.unified_diff(saved.splitlines(), now.splitlines(), "run", "now",
                                                          lineterm="", n=0) if line[:1] in "+-"][2:12]
            raise MtbertError(f"the spec differs from the one {run.path} was started with, so the run cannot "
                              "continue exactly:\n  " + "\n  ".join(diff) +
                              "\n  fix: resume with the same spec, --set overrides and MTBERT_DATA")
        return run

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as fp:
            fp.write(json.dumps(record) + "\n")

    def write_best(self, record: dict) -> None:
        write_json(self.best, record)
