"""Run the report experiments and tabulate them (docs/results.md, section 3).

Each example spec runs at its own budget (what docs/results.md reports), or
with ``--one-epoch`` at one epoch of its multitask training (one per phase),
a budget a CPU can afford for every experiment. Runs already finished (a
best.json in their directory) are skipped, so the script can be restarted;
``--parallel N`` runs N at a time (on one GPU, N small runs keep it busier
than one).

    MTBERT_DATA=../shared/data/cs224n python benchmarks/run_experiments.py [--one-epoch] [--parallel N] [NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MTBERT = Path(sys.executable).with_name("mtbert")  # the CLI of the environment running this script
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


def run(name: str, out: Path, reduced: bool) -> None:
    if (out / name / "best.json").is_file():
        print(f"{name}: done already", flush=True)
        return
    args = [str(MTBERT), "run", f"examples/{name}.toml", "--out",
            str(out / name), "--no-progress", "--set", "train.save_every=0"]
    for override in one_epoch(name) if reduced else []:
        args += ["--set", override]
    print(" ".join(args[1:]), flush=True)
    with open(out / f"{name}.log", "w") as log:
        subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)


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
    done = [str(out / n) for n in args.names if (out / n / "best.json").is_file()]
    subprocess.run([str(MTBERT), "compare", *done, "--format", "markdown", "--output", str(out / "table.md")],
                   cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
