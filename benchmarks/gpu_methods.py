"""Issue 13's method comparison and single-task claim at the full budget, many runs at a time on one GPU.

    MTBERT_DATA=../shared/data/cs224n python benchmarks/gpu_methods.py [--parallel 16]
        [--deadline 480] [--out runs/gpu-methods] [--set KEY=VALUE ...] [--max-runs N]

A lent GPU comes with minutes, not hours, so the runs are queued most wanted
first and started ``--parallel`` at a time (small MiniLM runs leave one GPU
mostly idle; several side by side keep it busy):

1. the claim (``multitask_claim.py``: proportional_joint sampling, 3 epochs =
   the single-task models' 2,694 batches) with DB-MTL, seeds 11 12 13;
2. every method of ``compare_methods.py`` at the full budget (all-tasks
   sampler, 3 epochs = 1,326 steps), seed 11;
3. the claim with Aligned-MTL, seeds 11 12 13;
4. seeds 12 and 13 of ``sum``, PCGrad, DB-MTL and Aligned-MTL;
5. the three single-task models on the same GPU (seeds 11 12 13), so that
   the claim is also measured like for like;
6. the claim with IMTL-G (the CPU's claim runs), seeds 11 12 13;
7. seeds 12 and 13 of every other method.

A run starts only if it is expected to end before ``--deadline`` seconds
(the longest finished run of its kind, or ``--guess`` before one has
finished); at the deadline the runs still going are stopped (their finished
epochs stay in ``metrics.jsonl``; the tables leave them out). Each run's
console output is ``<run>.log`` beside it, and finished runs are skipped when
the script runs again, as in the scripts it draws on. At the end it writes
``table-methods.md``, ``table-claim-<gradient>.md`` and ``table-single.md``
under ``--out`` and prints them. ``--set`` adds overrides to every run (a CPU
dry run: a tiny encoder and one epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_methods import METHODS, overrides as method_overrides, seed_rows, table as methods_table  # noqa: E402
from multitask_claim import TASKS, scores, single_task_scores, table as claim_table  # noqa: E402
from run_experiments import ROOT, console_log, finished, finished_best, run_command  # noqa: E402

SEEDS = [11, 12, 13]
FULL_EPOCHS = 3
CLAIM_GRADIENTS = ["db_mtl", "aligned_mtl", "imtl"]
SEEDED_METHODS = ["sum", "pcgrad", "db_mtl", "aligned_mtl"]


@attrs.frozen
class Job:
    kind: str  # runs of one kind take about as long: the deadline's estimate is per kind
    spec: str
    run_dir: Path
    overrides: list[str]


def plan(out: Path) -> list[Job]:
    """Every run, most wanted first (the module docstring's order)."""
    def claim(gradient: str) -> list[Job]:
        return [Job("claim", "examples/best_multitask.toml", out / "claim" / f"{gradient}-s{seed}",
                    ["sampler=proportional_joint", f"gradient={gradient}", f"seed={seed}", "train.save_every=0"])
                for seed in SEEDS]

    def methods(names: list[str], seeds: list[int]) -> list[Job]:
        return [Job("methods", "examples/best_multitask.toml", out / "methods" / f"{m}-s{s}",
                    method_overrides(m, s, FULL_EPOCHS)) for s in seeds for m in names]

    single = [Job(f"single-{task}", f"examples/single_task_{task}.toml", out / "single" / f"{task}-s{seed}",
                  [f"seed={seed}", "train.save_every=0"]) for seed in SEEDS for task, _, _ in TASKS]
    return [*claim("db_mtl"), *methods(METHODS, [11]), *claim("aligned_mtl"), *methods(SEEDED_METHODS, [12, 13]),
            *single, *claim("imtl"), *methods([m for m in METHODS if m not in SEEDED_METHODS], [12, 13])]


def label(job: Job) -> str:
    return f"{job.run_dir.parent.name}/{job.run_dir.name}"

def start(job: Job, extra: list[str]) -> subprocess.Popen:
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(console_log(job.run_dir), "w") as log:  # the child keeps its own handle
        # a process group of its own, so that stopping it at the deadline stops its workers too
        return subprocess.Popen(run_command(job.spec, job.run_dir, [*job.overrides, *extra]), cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(processes: list[subprocess.Popen], grace: float = 20.0) -> None:
    """SIGTERM (mtbert saves its state and exits), then SIGKILL what is left after ``grace`` seconds."""
    for p in processes:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    ends = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(max(0.1, ends - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def campaign(jobs: list[Job], parallel: int, deadline: float, guess: float, extra: list[str]) -> dict[str, list]:
    """Run ``jobs`` in order, ``parallel`` at a time, none started that would not end before
    ``deadline`` seconds; returns which finished, were stopped, or were left out."""
    began = time.monotonic()
    clock = lambda: time.monotonic() - began  # noqa: E731
    longest: dict[str, float] = {}
    pending = deque(j for j in jobs if not finished(console_log(j.run_dir)))
    running: dict[subprocess.Popen, tuple[Job, float]] = {}
    outcome: dict[str, list] = {"finished": [], "failed": [], "stopped": [], "left out": []}
    last_report = 0.0
    while pending or running:
        for p in [p for p in running if p.poll() is not None]:
            job, started = running.pop(p)
            took = clock() - started
            ok = finished(console_log(job.run_dir))
            outcome["finished" if ok else "failed"].append(f"{label(job)} {took:.0f} s")
            if ok:
                longest[job.kind] = max(longest.get(job.kind, 0.0), took)
            print(f"[{clock():6.0f} s] {'done' if ok else 'FAILED'} {label(job)} in {took:.0f} s"
                  + ("" if ok else f": see {console_log(job.run_dir)}"), flush=True)
        if clock() >= deadline:
            print(f"[{clock():6.0f} s] deadline: stopping {len(running)} run(s)", flush=True)
            stop(list(running))
            outcome["stopped"] += [label(j) for j, _ in running.values()]
            outcome["left out"] += [label(j) for j in pending]
            break
        skipped = deque()
        while pending and len(running) < parallel:
            job = pending.popleft()
            if clock() + longest.get(job.kind, guess) > deadline:
                skipped.append(job)  # a shorter kind further down may still fit
                continue
            running[start(job, extra)] = (job, clock())
            print(f"[{clock():6.0f} s] start {label(job)}", flush=True)
        pending.extendleft(reversed(skipped))
        if not running:  # nothing fits any more
            outcome["left out"] += [label(j) for j in pending]
            break
        if clock() - last_report >= 30:
            last_report = clock()
            print(f"[{clock():6.0f} s] running {len(running)}, finished {len(outcome['finished'])}, "
                  f"waiting {len(pending)}", flush=True)
        time.sleep(1.0)
    return outcome


def single_score(run: Path, task: str, metric: str) -> float | None:
    """A finished single-task run's best dev score (its best.json holds its one task)."""
    record = finished_best(run)
    return None if record is None else record["tasks"][task][metric]


def single_table(out: Path) -> str:
    """The single-task runs per seed and their mean, beside the CPU single-task models."""
    reference = single_task_scores()
    rows = ["| model | " + " | ".join(label for _, _, label in TASKS) + " |", "|---" * (len(TASKS) + 1) + "|",
            "| single-task models, CPU fp32 (seed 11) | " + " | ".join(f"{reference[t]:.4f}" for t, _, _ in TASKS)
            + " |"]
    per_seed = {seed: {t: single_score(out / "single" / f"{t}-s{seed}", t, metric) for t, metric, _ in TASKS}
                for seed in SEEDS}
    for seed, record in per_seed.items():
        rows.append(f"| single-task, this machine, seed {seed} | " + " | ".join(
            "-" if record[t] is None else f"{record[t]:.4f}" for t, _, _ in TASKS) + " |")
    means = {t: [r[t] for r in per_seed.values() if r[t] is not None] for t, _, _ in TASKS}
    rows.append("| single-task, this machine, mean | " + " | ".join(
        f"{statistics.mean(v):.4f} ({len(v)})" if v else "-" for v in means.values()) + " |")
    return "\n".join(rows)


def tables(out: Path) -> str:
    parts = [f"## every method, {FULL_EPOCHS} epochs (all-tasks sampler)\n\n"
             + seed_rows(out / "methods", METHODS, SEEDS) + "\n\n" + methods_table(out / "methods", METHODS, SEEDS)]
    single = single_task_scores()
    for gradient in CLAIM_GRADIENTS:
        runs = {seed: record for seed in SEEDS if (record := scores(out / "claim" / f"{gradient}-s{seed}"))}
        text = claim_table(runs, single)
        (out / f"table-claim-{gradient}.md").write_text(text + "\n")
        parts.append(f"## the claim, proportional_joint + {gradient}\n\n{text}")
    parts.append("## single-task models on this machine\n\n" + single_table(out))
    (out / "table-methods.md").write_text(parts[0] + "\n")
    (out / "table-single.md").write_text(parts[-1] + "\n")
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=16, help="runs at a time")
    parser.add_argument("--deadline", type=float, default=480.0, help="seconds: no run may go on past it")
    parser.add_argument("--guess", type=float, default=300.0,
                        help="seconds a run is expected to take before one of its kind has finished")
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu-methods"))
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every run (e.g. a tiny encoder for a dry run)")
    parser.add_argument("--max-runs", type=int, default=None, help="only the first N runs of the plan")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan(out)[: args.max_runs]
    outcome = campaign(jobs, args.parallel, args.deadline, args.guess, args.extra)
    (out / "outcome.json").write_text(json.dumps(outcome, indent=1))
    print(tables(out))
    print(f"finished {len(outcome['finished'])}, failed {len(outcome['failed'])}, "
          f"stopped {len(outcome['stopped'])}, left out {len(outcome['left out'])}")


if __name__ == "__main__":
    main()
