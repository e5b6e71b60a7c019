"""A study on Optuna: its storage, sampler and pruner, and the trials one worker runs.

Each trial is a normal run (its own run directory, ``trial-NNNN`` in the
study's directory) of the spec with the drawn values set. Every evaluation
reports the run's overall dev score to Optuna; when the pruner finds it
hopeless against the other trials at that step, the run stops at the next
step boundary, saves its state and is marked pruned (its directory kept).
A trial that fails (a spec the drawn values make invalid, a diverged run,
any error) is recorded with its reason and the study goes on. SIGTERM (and
Ctrl-C) end the running trial as ``mtbert run`` does; such a trial is
recorded as interrupted and the next ``mtbert tune`` of the same study
retries it first, resuming its run directory when it saved a state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
import warnings
from pathlib import Path

from mtbert.base.errors import MtbertError, SpecError, Stopped, first_line
from mtbert.base.signals import StopRequest
from mtbert.tune.settings import Settings, Study

log = logging.getLogger(__name__)

PRUNED = "pruned"  # the stop request's reason when the pruner stops a run
HEARTBEAT_S, GRACE_S = 10, 60  # a trial whose worker was silent this long is marked failed (a killed worker)
RACES = ("IntegrityError", "ProgrammingError", "OperationalError")  # sqlalchemy's, while tables are made


def need_optuna():
    try:
        import optuna
    except ImportError:
        raise MtbertError("mtbert tune needs Optuna: pip install 'mtbert[tune]' (optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # mtbert prints each trial and its failure itself
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(settings: Settings, directory: Path) -> str:
    """The study's database: the one named, or SQLite in the study's directory."""
    return settings.storage or f"sqlite:///{(directory / 'study.db').resolve()}"


def open_storage(url: str, attempts: int = 5):
    optuna = need_optuna()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        for attempt in range(attempts):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S)
            except Exception as exc:  # workers starting together on a new database race to make its tables:
                if attempt == attempts - 1 or type(exc).__name__ not in RACES:  # the loser finds them made
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ModuleNotFoundError as exc:
        raise MtbertError(f"the study's storage {hide_password(url)} needs the Python package {exc.name!r}: "
                          "pip install it (for PostgreSQL: pip install 'psycopg[binary]')") from None
    except Exception as exc:  # sqlalchemy's errors: a server that does not answer, a bad URL, no permission
        raise MtbertError(f"cannot open the study's storage {hide_password(url)}: {type(exc).__name__}: "
                          f"{first_line(exc, 300)}\n  fix: check the URL (dialect://user:password@host/database) "
                          "and that the database server is running") from None


def hide_password(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, credentials = head.partition("://")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{tail}"


def make_sampler(settings: Settings, worker: int):
    optuna = need_optuna()
    # each worker its own stream (same seed = same draws); reproducible for a given worker count
    seed = None if settings.seed is None else settings.seed + 1009 * worker
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "grid":
        return optuna.samplers.GridSampler(settings.space.grid(), seed=seed)
    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, settings.trials // 4)))


def make_pruner(settings: Settings):
    optuna = need_optuna()
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials,
                                           n_warmup_steps=settings.warmup_steps)
    if settings.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(study: Study, directory: Path, worker: int = 0):
    """The Optuna study (made on first use, else continued)."""
    optuna = need_optuna()
    settings = study.settings
    url = storage_url(settings, directory)
    storage = open_storage(url)
    directions = ["maximize"] * len(settings.objectives)
    try:
        opened = optuna.create_study(storage=storage, study_name=study.name, directions=directions,
                                     sampler=make_sampler(settings, worker), pruner=make_pruner(settings),
                                     load_if_exists=True)
    except ValueError as exc:  # the study exists with other directions
        raise MtbertError(f"study {study.name!r} in {hide_password(url)} cannot be continued with these "
                          f"objectives ({', '.join(settings.objectives)}): {first_line(exc, 200)}\n"
                          "  fix: give the study another name (study = ... or --study)") from None
    if len(opened.directions) != len(directions):
        raise MtbertError(f"study {study.name!r} in {hide_password(url)} has {len(opened.directions)} "
                          f"objective(s), not {len(directions)}; give the study another name (--study)")
    opened.set_user_attr("objectives", list(settings.objectives))
    return opened


def interrupted(trial) -> bool:
    return bool(trial.user_attrs.get("interrupted"))


def counted(study) -> int:
    """Trials that use the study's budget: every one but those interrupted (retried instead)."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.WAITING and not (t.state == TrialState.FAIL and interrupted(t)))


def retry_interrupted(study) -> list[int]:
    """Queue every interrupted trial not yet retried, with its values and its run directory: the
    trials a signal ended are the first of a continued study."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retries") for t in trials}
    queued = []
    for t in trials:
        if t.state == TrialState.FAIL and interrupted(t) and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"retries": t.number, "resumes": t.user_attrs.get("run")})
            queued.append(t.number)
    return queued


@contextlib.contextmanager
def logged_to(path: Path):
    """A trial's log in its run directory, as ``mtbert run`` keeps one (the study's terminal shows only
    a line per trial)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


class Interrupted(Exception):
    """A trial ended by a signal (recorded as failed, retried when the study continues)."""


class Worker:
    """Runs trials of one study in this process until the study has its trials or a signal comes."""

    def __init__(self, study: Study, directory: Path, registry, worker: int = 0, echo=None):
        self.study, self.directory, self.registry = study, Path(directory), registry
        self.settings = study.settings
        self.echo = echo or (lambda trial: None)
        self.optuna_study = open_study(study, self.directory, worker)
        self.between = StopRequest()  # SIGTERM between two trials

    def run(self) -> None:
        left = self.settings.trials - counted(self.optuna_study)
        if left <= 0:
            return
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self.between.on_sigterm():
                self.optuna_study.optimize(self.objective, n_trials=left, catch=(Exception,),
                                           callbacks=[self.after_trial], gc_after_trial=True)
        except SQLAlchemyError as exc:  # the database went away, a full disk under SQLite ...
            raise MtbertError(f"the study's storage failed: {type(exc).__name__}: {first_line(exc, 300)}\n"
                              "  fix: check the database (or the disk under the study directory), then run the "
                              "same command again: the study continues") from None
        if self.between.signal:
            raise Stopped(f"{self.between.signal} received: the study stopped (a running trial saved its state "
                          "and is retried first); continue it with the same command")

    def after_trial(self, optuna_study, trial) -> None:
        from mtbert.tune.results import write_results

        write_results(optuna_study, self.directory, self.settings.objectives, self.study.name)
        self.echo(trial)
        if counted(optuna_study) >= self.settings.trials or self.between.signal:
            optuna_study.stop()

    # -- one trial ------------------------------------------------------------------------
    def objective(self, trial):
        from mtbert.config.spec import structure_spec
        from mtbert.runs.rundir import RunDir
        from mtbert.training.loop import Trainer

        trial.set_user_attr("host", f"{socket.gethostname()}:{os.getpid()}")
        values, _ = self.settings.space.sample(trial)
        resumes = trial.user_attrs.get("resumes")
        name = resumes or f"trial-{trial.number:04d}"
        trial.set_user_attr("run", name)
        path = self.directory / name
        try:
            spec = structure_spec(self.settings.space.apply(self.study.data, values), self.registry,
                                  f"trial {trial.number}")
        except SpecError as exc:  # a combination no spec takes (each value alone was checked)
            said = "; ".join(f"{where}: {message}" if where else message for where, message in exc.problems)
            return self.failed(trial, f"the drawn values make an invalid spec: {said[:400]}")
        try:
            trainer = Trainer(spec, self.registry, progress=False)
            trainer.on_evaluation = lambda record: self.report(trial, trainer, record)
            resume = resumes is not None and (path / "state").exists()
            run = RunDir.existing(path, spec) if resume else RunDir.create(spec, self._fresh(path))
            trial.set_user_attr("run", run.path.name)
            path = run.path
            with logged_to(run.path / "log.txt"):
                best = trainer.fit(run, resume=resume)
        except Stopped as exc:
            if trainer.stop.signal == PRUNED:
                trial.set_user_attr("reason", f"pruned at step {trainer.step}")
                raise need_optuna().TrialPruned() from None
            trial.set_user_attr("interrupted", trainer.stop.signal or "a stop request")
            self.between.signal = trainer.stop.signal or "SIGTERM"  # no trial after this one
            self.optuna_study.stop()
            raise Interrupted(str(exc)) from None
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", "SIGINT")
            raise
        except MtbertError as exc:
            return self.failed(trial, f"{exc.title}: {first_line(exc, 400)}")
        except Exception as exc:  # any error in a plugin: this combination fails, the study goes on
            if path.is_dir():  # the whole traceback beside the trial's log, for a plugin's author
                (path / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            return self.failed(trial, f"{type(exc).__name__}: {first_line(exc, 400)}")
        if best is None:
            return self.failed(trial, "no dev evaluation was made")
        return self.values(trial, trainer, best)

    def _fresh(self, path: Path) -> Path:
        """The trial's directory; a retry whose run never saved a state starts over beside it."""
        from mtbert.runs.rundir import usable

        n = 1
        candidate = path
        while not usable(candidate):
            n += 1
            candidate = path.with_name(f"{path.name}-{n}")
        return candidate

    def report(self, trial, trainer, record: dict) -> None:
        """Each evaluation's overall score to the pruner; a hopeless run is asked to stop."""
        if len(self.settings.objectives) > 1:
            return  # Optuna prunes single-objective studies only
        trial.report(float(record["overall"]), int(record["step"]))
        if not trainer.finishing and trial.should_prune():  # a finished run is a finished trial
            trainer.stop.request(PRUNED)

    def values(self, trial, trainer, best: dict):
        """The objectives from the run's best evaluation: the overall score, or a task's main metric
        in [0, 1] (as the overall score counts it)."""
        import math

        from mtbert.training.prediction import main_score

        out = []
        for name in self.settings.objectives:
            if name == "overall":
                out.append(float(best["overall"]))
            else:
                out.append(float(main_score(trainer.tasks[name], best["tasks"][name])))
        trial.set_user_attr("overall", float(best["overall"]))
        trial.set_user_attr("tasks", best["tasks"])
        trial.set_user_attr("step", int(best["step"]))
        if not all(math.isfinite(v) for v in out):
            return self.failed(trial, f"a non-finite score {out}")
        return out if len(out) > 1 else out[0]

    def failed(self, trial, reason: str):
        """Record why and fail the trial (Optuna marks it failed and the study goes on)."""
        trial.set_user_attr("reason", reason)
        raise TrialFailed(reason)


class TrialFailed(Exception):
    """A trial that failed with a recorded reason."""
