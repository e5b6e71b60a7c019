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
that already holds a run is an error. A directory left by a run stopped
before it began (no training state, no evaluation, no checkpoint: it stopped
while reading its data) counts as free and is reused.

A run directory has one writer at a time: the training process holds an OS
lock on ``.lock`` in it (``RunDir.lock``), so a second ``run --out`` or
``--resume`` on it is refused at once, naming the process that holds it; a
process that died holds nothing.
"""

from __future__ import annotations

import datetime
import difflib
import fcntl
import json
import os
import socket
from pathlib import Path

from mtbert.base.atomic import write_file
from mtbert.base.errors import MtbertError
from mtbert.config.spec import Spec, dump_spec

LOCK = ".lock"
# what a run writes before its first training state: a run holding nothing else never began
BEFORE_TRAINING = {"spec.toml", "log.txt", "tb", LOCK}


def write_json(path: Path, data) -> None:
    write_file(path, json.dumps(data, indent=2) + "\n", f"{Path(path).name}", training=True)


def never_began(path: Path) -> bool:
    """Whether ``path`` holds only what a run writes before training (it stopped reading its data)."""
    try:
        names = {p.name for p in path.iterdir() if not p.name.startswith(".spec.toml.tmp")}
    except OSError:
        return False
    return names <= BEFORE_TRAINING


def usable(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and never_began(path))


def free_dir(default: Path, explicit: str | Path | None = None) -> Path:
    """``explicit`` if it holds no run (else an error), or the first free ``default[-n]``."""
    if explicit is not None:
        path = Path(explicit)
        above = next((p for p in path.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise MtbertError(f"--out {path}: a part of that path is a file, not a folder ({above}); choose "
                              "another --out (nothing was changed)")
        if path.exists() and not path.is_dir():
            raise MtbertError(f"--out {path} is a file, not a directory; choose another --out (nothing was changed)")
        if not usable(path):
            raise MtbertError(f"{path} already holds files; choose another --out (nothing was changed)")
        return path
    path, n = default, 1
    while not usable(path):
        n += 1
        path = default.with_name(f"{default.name}-{n}")
    return path


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = None  # the open lock file while this process holds the directory
        self.spec = self.path / "spec.toml"
        self.metrics = self.path / "metrics.jsonl"
        self.best = self.path / "best.json"
        self.tb = self.path / "tb"
        self.checkpoint = self.path / "checkpoint"
        self.predictions = self.path / "predictions"
        self.state = self.path / "state"

    @classmethod
    def create(cls, spec: Spec, out: str | Path | None = None, lock: bool = True) -> "RunDir":
        """A new run directory holding ``spec`` (locked for this process unless ``lock`` is False)."""
        path = free_dir(Path(spec.out) / spec.name, out)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MtbertError(f"cannot make the run directory {path}: {exc.strerror or exc}\n"
                              "  fix: choose an --out in a writable folder") from None
        run = cls(path)
        if lock:
            run.lock()
            if not never_began(path):  # another run took it between the check and the lock
                run.unlock()
                raise MtbertError(f"{path} was just taken by another run; start again (nothing was changed)")
        write_file(run.spec, dump_spec(spec), "the run's spec")
        return run

    def lock(self) -> "RunDir":
        """Hold this run directory for this process (an OS lock on ``.lock``; idempotent). A second
        holder is refused at once, with the process that holds it."""
        if self._lock is not None:
            return self
        try:
            fp = open(self.path / LOCK, "a+", encoding="utf-8")
        except OSError as exc:
            raise MtbertError(f"cannot open {self.path / LOCK}: {exc.strerror or exc}\n"
                              "  fix: check that the run directory is writable") from None
        try:
            fcntl.flock(fp.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fp.seek(0)
            holder = fp.read().strip() or "another process"
            fp.close()
            raise MtbertError(f"{self.path} is in use by {holder}: a run directory has one writer at a time.\n"
                              "  fix: wait for that run to end (or stop it), or train into another --out") from None
        except OSError:  # a file system without locks: go on without one
            pass
        fp.seek(0)
        fp.truncate()
        fp.write(f"process {os.getpid()} on {socket.gethostname()}, since "
                 f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
        fp.flush()
        self._lock = fp
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing releases the lock
            self._lock = None

    @classmethod
    def existing(cls, path: Path, spec: Spec) -> "RunDir":
        """A run directory to resume: it must have been made from this very spec."""
        run = cls(Path(path))
        if run.path.is_dir() and never_began(run.path) and not run.state.exists():
            raise MtbertError(f"{run.path} holds no run to resume: it was stopped before its first training "
                              "state (while it read its data).\n  fix: start it again with `mtbert run SPEC --out "
                              f"{run.path}` (the directory is reused)")
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
