"""``mtbert tune``: run a study, in this process or in ``parallel`` worker processes, and leave its
results in the study's directory (``<out>/<name>-tune`` unless ``--out``).

Running the same command again continues the study (its database remembers
every trial); several machines running it against one database URL share
the study, each writing its trials' run directories in its own study
directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mtbert.base.atomic import write_file
from mtbert.base.errors import MtbertError, Stopped
from mtbert.tune.results import line, state_of, write_results
from mtbert.tune.settings import Study
from mtbert.tune.study import Worker, counted, hide_password, open_study, retry_interrupted, storage_url

MARKER = "tune.json"  # what makes a directory a study's (mtbert report, mtbert compare)


def study_dir(study: Study, out: str | Path | None) -> Path:
    """The study's directory: ``--out``, or ``<spec out>/<study name>-tune``; made if missing. A
    directory already holding this study is continued; one holding anything else is refused."""
    path = Path(out) if out is not None else Path(study.data.get("out", "runs")) / f"{study.name}-tune"
    marker = path / MARKER
    if path.exists() and not path.is_dir():
        raise MtbertError(f"{path} is a file; the study needs a directory (choose another --out)")
    if path.is_dir() and any(path.iterdir()) and not marker.is_file():
        raise MtbertError(f"{path} holds something that is not a study; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MtbertError(f"cannot make the study directory {path}: {exc.strerror or exc}\n"
                          "  fix: choose an --out in a writable folder") from None
    if marker.is_file():
        try:
            recorded = read_record(path)
        except MtbertError:  # damaged: this run writes it again
            recorded = {"study": study.name}
        if recorded.get("study") != study.name:
            raise MtbertError(f"{path} holds study {recorded.get('study')!r}, not {study.name!r}; choose "
                              "another --out or the same study name")
    return path


def record(study: Study, directory: Path) -> None:
    settings = study.settings
    url = settings.storage or "sqlite:study.db (in this directory)"
    write_file(directory / MARKER, json.dumps({
        "study": study.name, "storage": hide_password(url), "objectives": list(settings.objectives),
        "spec": str(study.source), "sampler": settings.sampler, "pruner": settings.pruner,
        "trials": settings.trials}, indent=2) + "\n", "the study's description")


def read_record(directory: Path) -> dict:
    try:
        recorded = json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MtbertError(f"{directory} is not a study directory ({MARKER}: {exc})") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("study"), str):
        raise MtbertError(f"{directory / MARKER} is damaged: it names no study; write it again by running the "
                          "study's mtbert tune command")
    return recorded


def reopen(directory: Path, storage: str | None = None):
    """A finished or running study from its directory (for report and compare)."""
    from mtbert.tune.study import need_optuna, open_storage

    recorded = read_record(directory)
    url = storage or (recorded["storage"] if "(in this directory)" not in recorded["storage"]
                      else f"sqlite:///{(Path(directory) / 'study.db').resolve()}")
    if "***" in url:
        raise MtbertError(f"the study {recorded['study']!r} lives in {url}; give its full URL with --storage")
    optuna = need_optuna()

    try:
        return optuna.load_study(study_name=recorded["study"], storage=open_storage(url)), recorded
    except KeyError:
        raise MtbertError(f"no study {recorded['study']!r} in {hide_password(url)}") from None


def run_tune(study: Study, registry, out=None, echo=print,
             worker: int | None = None, spawn: list[str] | None = None) -> Path:
    """Run the study to its number of trials. ``worker`` set: this process is one of ``parallel``
    workers another ``mtbert tune`` started (it runs trials and writes results, nothing else)."""
    directory = study_dir(study, out)
    settings = study.settings
    if worker is not None:
        Worker(study, directory, registry, worker).run()
        return directory
    record(study, directory)
    optuna_study = open_study(study, directory)
    queued = retry_interrupted(optuna_study)
    done = counted(optuna_study)
    echo(f"study {study.name!r}: {done} of {settings.trials} trial(s) done"
         + (f", {len(queued)} interrupted one(s) retried first" if queued else "")
         + f"; storage {hide_password(storage_url(settings, directory))}; directory {directory}")
    try:
        if settings.parallel == 1:
            shown = Shown(optuna_study, settings, echo)
            Worker(study, directory, registry, 0, echo=shown.one).run()
        else:
            Pool(study, directory, spawn or [], echo).run()
    finally:
        best = write_results(optuna_study, directory, settings.objectives, study.name)
        finish(optuna_study, settings, directory, best, echo)
    return directory


def finish(optuna_study, settings, directory: Path, best: Path | None, echo) -> None:
    from mtbert.tune.results import front

    trials = optuna_study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[state_of(t)] = states.get(state_of(t), 0) + 1
    echo(f"{len(trials)} trial(s): " + ", ".join(f"{n} {s}" for s, n in states.items()))
    top = front(optuna_study)
    if top and len(settings.objectives) > 1:
        echo(f"Pareto front: {len(top)} trial(s), in {directory / 'front.md'}")
    elif top:
        echo(f"best: trial {top[0].number}, {settings.objectives[0]} {top[0].value:.4f}")
    echo(f"table in {directory / 'summary.md'}" + (f"; best spec in {best}" if best else ""))


class Shown:
    """The live table of one worker: a line per finished trial, with a bar over the study's trials."""

    def __init__(self, optuna_study, settings, echo):
        self.optuna_study, self.settings, self.echo = optuna_study, settings, echo
        self.bar = progress_bar(settings.trials, counted(optuna_study))

    def one(self, trial) -> None:
        from mtbert.tune.results import front

        top = front(self.optuna_study)
        text = line(trial, self.settings.objectives, top[0] if len(top) == 1 else None)
        if self.bar is not None:
            self.bar.write(text)
            self.bar.n = min(self.settings.trials, counted(self.optuna_study))
            self.bar.refresh()
        else:
            self.echo(text)


def progress_bar(total: int, done: int):
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="trials", unit="trial", leave=False)


class Pool:
    """``parallel`` worker processes on this machine, watched from here: their finished trials are
    shown as they come; SIGTERM or Ctrl-C here is passed on to them (each running trial saves its
    state and is retried when the study continues)."""

    def __init__(self, study: Study, directory: Path, command: list[str], echo):
        self.study, self.directory, self.command, self.echo = study, directory, command, echo
        self.settings = study.settings
        self.received: str | None = None

    def run(self) -> None:
        logs = self.directory / "workers"
        logs.mkdir(exist_ok=True)
        threads = self._threads()
        optuna_study = open_study(self.study, self.directory)
        seen = {t.number for t in optuna_study.get_trials(deepcopy=False) if t.state.is_finished()}
        children = []
        for i in range(self.settings.parallel):
            argv = [*self.command, "--out", str(self.directory), "--worker", str(i + 1)]
            if threads:
                argv += ["--set", f"train.threads={threads}"]
            with open(logs / f"worker-{i + 1}.log", "ab") as log_file:
                children.append(subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                                 start_new_session=True))  # Ctrl-C reaches them through here
        previous = {s: signal.signal(s, self._forward(children)) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._watch(children, optuna_study, seen)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        failed = [i + 1 for i, c in enumerate(children) if c.returncode not in (0, 143, -signal.SIGTERM)]
        if self.received == "SIGINT":
            raise KeyboardInterrupt  # Ctrl-C: exit 130, as mtbert run (the workers saved their states)
        if self.received:
            raise Stopped(f"{self.received} received: the workers stopped (their running trials saved their "
                          "states and are retried first); continue the study with the same command")
        if failed:
            raise MtbertError(f"worker(s) {failed} ended with an error; see {logs}/worker-N.log")

    def _threads(self) -> int | None:
        """CPU threads per worker when the spec leaves them to torch: the cores shared out."""
        if self.study.data.get("train", {}).get("threads"):
            return None
        return max(1, (os.cpu_count() or 1) // self.settings.parallel)

    def _forward(self, children):
        def handler(signum, frame):
            self.received = signal.Signals(signum).name
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)  # a clean stop at the next step boundary
        return handler

    def _watch(self, children, optuna_study, seen: set) -> None:
        shown = Shown(optuna_study, self.settings, self.echo)
        while True:
            running = any(c.poll() is None for c in children)
            for trial in optuna_study.get_trials(deepcopy=False):
                if trial.state.is_finished() and trial.number not in seen:
                    seen.add(trial.number)
                    shown.one(trial)
            if not running:
                return
            time.sleep(1.0)
