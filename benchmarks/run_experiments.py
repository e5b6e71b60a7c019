"""Run the report experiments and tabulate them (docs/results.md, section 3).

Each example spec runs at its own budget (what docs/results.md reports), or
with ``--one-epoch`` at one epoch of its multitask training (one per phase),
a budget a CPU can afford for every experiment. Runs already finished are skipped
and stopped ones resume, so the script can be restarted;
``--parallel N`` runs N at a time (on one GPU, N small runs keep it busier
than one).

    MTBERT_DATA=../shared/data/cs224n python benchmarks/run_experiments.py [--one-epoch] [--parallel N] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The CLI of the interpreter running this script, as a module: it works wherever the package is
# importable, also when it was installed with `pip install --target` (no script on the PATH).
MTBERT = [sys.executable, "-m", "mtbert"]
EXPERIMENTS = [
    "baseline", "concat_vs_parallel", "pearson_vs_mse", "full_then_heads", "heads_only", "annealed",
    "annealed_pals", "heads_then_full", "ordinal", "smart", "gradvac", "all_tasks_sum", "pcgrad", "bilstm",
    "cosine_sts", "sequential_sts_first", "cosent", "lora", "best_multitask", "pals_smart",
]


def one_epoch(name: str) -> list[str]:
    """--set overrides giving the experiment one epoch of training (one per phase)."""
    spec = tomllib.loads((ROOT / "examples" / f"{name}.toml").read_text())
    if "phases" not in spec:
        return ["train.epochs=1"]
    return [f"phases.{i}.epochs=1" for i in range(len(spec["phases"]))]


def finished(log: Path) -> bool:
    """Whether the run that wrote ``log`` (its console output) ended: the CLI's last line
    names the results. (A best.json alone does not say so: it is written at each new best.)"""
    lines = log.read_text().rstrip().splitlines() if log.is_file() else []
    return bool(lines) and lines[-1].startswith("results in ")


def console_log(run_dir: Path) -> Path:
    """Where a run's console output goes: ``<run_dir>.log`` beside the run directory."""
    return run_dir.with_name(run_dir.name + ".log")


def finished_best(run_dir: Path) -> dict | None:
    """The best evaluation (``best.json``) of a run that finished, else None."""
    path = run_dir / "best.json"
    return json.loads(path.read_text()) if path.is_file() and finished(console_log(run_dir)) else None


def run_command(spec: str, run_dir: Path, overrides: list[str]) -> list[str]:
    """The ``mtbert run`` command line for ``spec`` into ``run_dir``: ``--resume`` where the run
    has saved its spec already (a stopped run goes on from its last state), else ``--out``."""
    where = ["--resume", str(run_dir)] if (run_dir / "spec.toml").is_file() else ["--out", str(run_dir)]
    args = [*MTBERT, "run", spec, *where, "--no-progress"]
    for override in overrides:
        args += ["--set", override]
    return args


def run_mtbert(spec: str, run_dir: Path, overrides: list[str]) -> bool:
    """``mtbert run spec`` into ``run_dir`` with ``--set`` overrides, its console output in
    ``<run_dir>.log``; a run stopped before the end resumes from its last saved state
    (each epoch's start). False if the run did not finish."""
    log = console_log(run_dir)
    if finished(log):
        print(f"{run_dir.name}: done already", flush=True)
        return True
    args = run_command(spec, run_dir, overrides)
    print(" ".join(args[len(MTBERT):]), flush=True)
    with open(log, "w") as out:
        subprocess.run(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    if not finished(log):
        print(f"{run_dir.name}: did not finish, see {log}", flush=True)
        return False
    return True


def run(name: str, out: Path, reduced: bool) -> None:
    run_mtbert(f"examples/{name}.toml", out / name, ["train.save_every=0", *(one_epoch(name) if reduced else [])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=EXPERIMENTS)
    parser.add_argument("--one-epoch", action="store_true", help="one epoch (per phase) instead of the spec's budget")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--out", default=str(ROOT / "runs" / "experiments"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(lambda name: run(name, out, args.one_epoch), args.names))
    done = [str(out / n) for n in args.names if finished(out / f"{n}.log")]
    subprocess.run([*MTBERT, "compare", *done, "--format", "markdown", "--output", str(out / "table.md")],
                   cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
