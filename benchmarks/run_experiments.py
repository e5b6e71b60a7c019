"""Run the report experiments at one budget and tabulate them (docs/results.md).

Each example spec runs with the same reduced budget -- one epoch of its
multitask training (phases: one epoch each) -- so that the table compares
methods, not budgets; a CPU cannot afford the reports' full budgets for
every experiment. Runs already finished (a best.json in their directory) are
skipped, so the script can be restarted.

    MTBERT_DATA=../shared/data/cs224n python benchmarks/run_experiments.py [NAME ...]
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "experiments"
EXPERIMENTS = [
    "baseline", "concat_vs_parallel", "pearson_vs_mse", "full_then_heads", "heads_only", "annealed",
    "annealed_pals", "heads_then_full", "ordinal", "smart", "gradvac", "all_tasks_sum", "pcgrad", "bilstm",
    "cosine_sts", "sequential_sts_first", "cosent", "lora", "pals_smart",
]


def budget(name: str) -> list[str]:
    """--set overrides giving the experiment one epoch of training (one per phase)."""
    spec = tomllib.loads((ROOT / "examples" / f"{name}.toml").read_text())
    if "phases" not in spec:
        return ["train.epochs=1"]
    return [f"phases.{i}.epochs=1" for i in range(len(spec["phases"]))]


def main(names: list[str]) -> None:
    mtbert = Path(sys.executable).with_name("mtbert")
    for name in names or EXPERIMENTS:
        out = OUT / name
        if (out / "best.json").is_file():
            print(f"{name}: done already")
            continue
        args = [str(mtbert), "run", f"examples/{name}.toml", "--out", str(out), "--no-progress"]
        for override in budget(name):
            args += ["--set", override]
        print(" ".join(args[1:]), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(OUT / f"{name}.log", "w") as log:
            subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    done = [str(OUT / n) for n in EXPERIMENTS if (OUT / n / "best.json").is_file()]
    subprocess.run([str(mtbert), "compare", *done, "--format", "markdown", "--output",
                    str(OUT / "table.md")], cwd=ROOT, check=False)


if __name__ == "__main__":
    main(sys.argv[1:])
