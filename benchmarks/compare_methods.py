"""Which balancer or gradient method wins on the three course tasks, at one budget.

    MTBERT_DATA=../shared/data/cs224n python benchmarks/compare_methods.py [METHOD ...]
        [--seeds 11] [--epochs 1] [--out runs/methods]

Every method trains ``examples/best_multitask.toml`` (MiniLM, mean pooling,
AdamW 5e-5, batch 32) with the all-tasks sampler -- every step takes one
batch of each task, which the gradient methods need -- for ``--epochs``
epochs, once per seed in ``--seeds``, into ``<out>/<method>-s<seed>``.
Finished runs are skipped and stopped ones resume, so the script can be
restarted and extended (more methods, more seeds). At the end it prints the
three dev metrics and the overall score of every finished run, and, per
method, the mean and the spread (max - min) over its seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_experiments import ROOT, finished_best as best, run_mtbert  # noqa: E402

BALANCERS = ["uncertainty", "dwa", "rlw", "gls", "famo", "imtl_l", "gradnorm"]
GRADIENTS = ["pcgrad", "gradvac", "mgda", "mgda_ub", "imtl", "cagrad", "nash_mtl", "aligned_mtl", "db_mtl", "graddrop"]
METHODS = ["sum", *GRADIENTS, *BALANCERS]


def overrides(method: str, seed: int, epochs: int) -> list[str]:
    chosen = [f"balancer={method}"] if method in BALANCERS else [f"gradient={method}"]
    return ["sampler=all_tasks", *chosen, f"seed={seed}", f"train.epochs={epochs}", "train.save_every=0"]


def seed_rows(out: Path, methods: list[str], seeds: list[int]) -> str:
    """Every finished run's three dev metrics, overall score and the epoch of its best evaluation."""
    rows = ["| method | seed | SST acc | Quora acc | STS r | overall | best epoch |", "|---|---|---|---|---|---|---|"]
    for method in methods:
        for seed in seeds:
            if r := best(out / f"{method}-s{seed}"):
                t = r["tasks"]
                rows.append(f"| {method} | {seed} | {t['sst']['accuracy']:.4f} | {t['para']['accuracy']:.4f} | "
                            f"{t['sts']['pearson']:.4f} | {r['overall']:.4f} | {r['epoch']} |")
    return "\n".join(rows)


def table(out: Path, methods: list[str], seeds: list[int]) -> str:
    rows = ["| method | seeds | SST acc | Quora acc | STS r | overall (mean) | overall spread |",
            "|---|---|---|---|---|---|---|"]
    for method in methods:
        records = [r for s in seeds if (r := best(out / f"{method}-s{s}"))]
        if not records:
            continue
        mean = lambda get: statistics.mean(get(r) for r in records)  # noqa: E731
        overall = [r["overall"] for r in records]
        rows.append(f"| {method} | {len(records)} | {mean(lambda r: r['tasks']['sst']['accuracy']):.4f} | "
                    f"{mean(lambda r: r['tasks']['para']['accuracy']):.4f} | "
                    f"{mean(lambda r: r['tasks']['sts']['pearson']):.4f} | {statistics.mean(overall):.4f} | "
                    f"{max(overall) - min(overall):.4f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", default=METHODS, metavar="METHOD", help=", ".join(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[11])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "runs" / "methods"))
    args = parser.parse_args()
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        for seed in args.seeds:
            run_mtbert("examples/best_multitask.toml", out / f"{method}-s{seed}", overrides(method, seed, args.epochs))
    seeds = sorted({int(p.name.rsplit("-s", 1)[1]) for p in out.glob("*-s*") if p.is_dir()})
    text = seed_rows(out, METHODS, seeds) + "\n\n" + table(out, METHODS, seeds)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
