"""mtbert tune on the tiny encoder: pruning, failures recorded, several objectives and their front,
two worker processes on one SQLite study, a study stopped by SIGINT and continued. (PostgreSQL:
tests/tune/test_postgres.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from mtbert.commands.cli import main
from mtbert.config.spec import load_spec
from mtbert.tune.command import reopen, run_tune
from mtbert.tune.results import read_rows as rows
from mtbert.tune.settings import load_study

from helpers import tune_files


LR = '[params."train.lr"]\ntype = "choice"\nvalues = [3e-3, 1e-6]\n'


def test_a_study_prunes_hopeless_trials_and_leaves_a_runnable_best_spec(registry, tmp_path):
    spec, space = tune_files(tmp_path, registry, 'trials = 5\nsampler = "random"\nseed = 2\nstartup_trials = 2\n' + LR
                        + '[params."tasks.count.weight"]\ntype = "float"\nlow = 0.5\nhigh = 2.0\n')
    lines = []
    directory = run_tune(load_study(spec, space, registry), registry, tmp_path / "study", echo=lines.append)
    found = rows(directory)
    assert len(found) == 5 and {r["state"] for r in found} <= {"done", "pruned"}
    pruned = [r for r in found if r["state"] == "pruned"]
    assert any(r["params"]["train.lr"] == 1e-6 for r in pruned)  # the hopeless rate, stopped early
    for r in pruned:  # stopped cleanly at a step boundary, its directory kept
        run = directory / r["run"]
        evaluations = (run / "metrics.jsonl").read_text().splitlines()
        assert (run / "state").is_dir() and (run / "best.json").is_file() and len(evaluations) < 4
        assert r["reason"].startswith("pruned at step") and int(r["reason"].split()[-1]) < 12  # never at the end
    done = [r for r in found if r["state"] == "done"]
    best = max(done, key=lambda r: r["values"]["overall"])
    assert best["params"]["train.lr"] == 3e-3
    tuned = load_spec(directory / "best.toml", registry)  # a normal spec, the best trial's values in it
    assert tuned.train.lr == best["params"]["train.lr"] and tuned.name == "toy-best"
    assert tuned.tasks["count"].weight == pytest.approx(best["params"]["tasks.count.weight"])
    assert any(line.startswith("trial ") and "pruned" in line for line in lines)

    from mtbert.commands.compare import expand

    runs, _ = expand([directory])  # mtbert compare STUDY_DIR: every trial that scored
    assert sorted(p.name for p in runs) == sorted(r["run"] for r in found)
    result = CliRunner().invoke(main, ["report", str(directory)])
    assert result.exit_code == 0, result.output
    assert (directory / "report" / "history.png").is_file() and (directory / "report" / "importance.png").is_file()


def test_a_failing_trial_is_recorded_and_the_study_goes_on(registry, tmp_path):
    spec, space = tune_files(tmp_path, registry, 'trials = 2\nsampler = "grid"\npruner = "none"\n'
                        '[params."train.lr"]\ntype = "choice"\nvalues = [3e-3, 1e30]\n', max_bad_steps=1)
    result = CliRunner().invoke(main, ["tune", str(spec), "--space", str(space), "--out", str(tmp_path / "s")])
    assert result.exit_code == 1, result.output  # a trial failed: a script notices
    found = {r["params"]["train.lr"]: r for r in rows(tmp_path / "s")}
    assert found[3e-3]["state"] == "done"
    assert found[1e30]["state"] == "failed" and "non-finite loss" in found[1e30]["reason"]
    assert "failed" in result.output and "non-finite" in result.output  # the live table says why


def test_several_objectives_give_a_pareto_front(registry, tmp_path):
    spec, space = tune_files(tmp_path, registry, 'trials = 4\nsampler = "random"\nseed = 0\n'
                        'objectives = ["sent", "count"]\n'
                        '[params."tasks.sent.weight"]\ntype = "float"\nlow = 0.1\nhigh = 3.0\n'
                        '[params."train.lr"]\ntype = "float"\nlow = 1e-4\nhigh = 1e-2\nlog = true\n')
    directory = run_tune(load_study(spec, space, registry), registry, tmp_path / "study", echo=lambda _: None)
    study, _ = reopen(directory)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    front = study.best_trials
    assert front and len(done) == 4
    for t in front:  # no finished trial is at least as good on both and better on one
        assert not any(all(o >= v for o, v in zip(other.values, t.values)) and other.values != t.values
                       for other in done)
    text = (directory / "front.md").read_text()
    assert all(t.user_attrs["run"] in text for t in front)
    first = rows(directory)[0]
    assert set(first["values"]) == {"sent", "count"} and first["values"]["sent"] == pytest.approx(
        first["tasks"]["sent"]["accuracy"])  # a task's main metric (accuracy is already in [0, 1])
    result = CliRunner().invoke(main, ["report", str(directory)])
    assert result.exit_code == 0 and (directory / "report" / "front-sent-count.png").is_file()


def tune_command(spec, space, out, *more) -> list[str]:
    return [sys.executable, "-m", "mtbert", "tune", str(spec), "--space", str(space), "--out", str(out), *more]


def test_two_worker_processes_share_one_sqlite_study(registry, tmp_path):
    spec, space = tune_files(tmp_path, registry, 'trials = 4\nsampler = "random"\npruner = "none"\n'
                        '[params."train.lr"]\ntype = "float"\nlow = 1e-4\nhigh = 1e-2\nlog = true\n',
                        steps=12, eval_every=6)
    done = subprocess.run(tune_command(spec, space, tmp_path / "study", "--parallel", "2"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    study, _ = reopen(tmp_path / "study")
    trials = study.trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3] and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["host"] for t in trials}) == 2  # both workers trained trials
    assert len({t.params["train.lr"] for t in trials}) == 4  # each worker its own draws
    assert sorted(p.name for p in (tmp_path / "study" / "workers").iterdir()) == ["worker-1.log", "worker-2.log"]
    assert done.stdout.count("\ntrial ") + done.stdout.startswith("trial ") == 4  # a line per trial, once


def test_a_study_stopped_by_sigint_continues_with_the_same_command(registry, tmp_path):
    spec, space = tune_files(tmp_path, registry, 'trials = 2\nsampler = "random"\npruner = "none"\n'
                        '[params."train.lr"]\ntype = "float"\nlow = 1e-3\nhigh = 1e-2\nlog = true\n',
                        steps=60, eval_every=60, save_every=10, log_every=10)
    command = tune_command(spec, space, tmp_path / "study")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = tmp_path / "study" / "trial-0000" / "state"
    deadline = time.time() + 120
    while not state.is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert state.is_dir(), process.communicate()[0]
    process.send_signal(signal.SIGINT)  # Ctrl-C in the middle of the first trial
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output
    study, _ = reopen(tmp_path / "study")
    first = study.trials[0]
    assert first.state.name == "FAIL" and first.user_attrs["interrupted"] == "SIGINT"

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 interrupted one(s) retried first" in again.stdout
    study, _ = reopen(tmp_path / "study")
    retried = [t for t in study.trials if t.user_attrs.get("retries") == 0]
    assert len(retried) == 1 and retried[0].params == first.params  # the same values, its directory resumed
    assert retried[0].user_attrs["run"] == "trial-0000" and retried[0].state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2  # the study's 2 trials, none lost
    assert not (tmp_path / "study" / f"trial-{retried[0].number:04d}").exists()


def test_the_trainer_tells_its_listener_each_evaluation_and_whether_it_is_the_last(registry, tmp_path):
    """What pruning reads: each evaluation's record, and whether the run is at its end (a trial that
    reached its last step is finished, not pruned)."""
    from helpers import toy_data, toy_spec
    from mtbert.runs.rundir import RunDir
    from mtbert.training.loop import Trainer

    spec = toy_spec(registry, toy_data(tmp_path / "data", n=32), steps=4, eval_every=2, threads=1)
    trainer = Trainer(spec, registry, progress=False)
    seen = []
    trainer.on_evaluation = lambda record: seen.append((record["step"], trainer.finishing))
    trainer.fit(RunDir.create(spec, tmp_path / "run"))
    assert seen == [(2, False), (4, True)]


def test_a_damaged_study_directory_is_one_screen(tmp_path):
    (tmp_path / "tune.json").write_text("[1]")
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "tune.json is damaged: it names no study" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
