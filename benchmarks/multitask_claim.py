"""One multitask model against mtbert's own three single-task models, at their budget, over seeds.

    MTBERT_DATA=../shared/data/cs224n python benchmarks/multitask_claim.py [--gradient imtl]
        [--balancer equal] [--sampler proportional_joint] [--seeds 11 12 13] [--out runs/claim]

The single-task models (docs/results.md, section 1: ``examples/single_task_*.toml``,
3 epochs each, seed 11) saw each task's training set three times: 2,694
batches of 32 in all. The multitask model trains ``examples/best_multitask.toml``
(MiniLM, mean pooling, AdamW 5e-5, batch 32, 3 epochs) with ``--sampler``,
``--gradient`` and ``--balancer``. With the default ``proportional_joint``
sampler each epoch is every task's single pass, so 3 epochs are exactly the
single-task models' 2,694 batches, shared out over 1,326 steps that the
gradient method combines. Each seed runs into ``<out>/<gradient>-s<seed>``
(``<out>/<balancer>+<gradient>-s<seed>`` with a balancer); finished runs are
skipped and stopped ones resume. The table gives every seed's best
evaluation, the mean over the seeds and its margin over each single-task
model (read from ``benchmarks/results/cpu/runs/single_task_*/best.json``),
and the seeds' spread (max - min).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_experiments import ROOT, finished_best, run_mtbert  # noqa: E402

TASKS = [("sst", "accuracy", "SST acc"), ("para", "accuracy", "Quora acc"), ("sts", "pearson", "STS r")]
SINGLE = ROOT / "benchmarks" / "results" / "cpu" / "runs"


def single_task_scores() -> dict[str, float]:
    """Each single-task model's best dev score on its task, as measured (section 1)."""
    return {task: json.loads((SINGLE / f"single_task_{task}" / "best.json").read_text())["tasks"][task][metric]
            for task, metric, _ in TASKS}


def run_name(args, seed: int) -> str:
    return f"{args.balancer + '+' if args.balancer != 'equal' else ''}{args.gradient}-s{seed}"


def scores(run: Path) -> dict[str, float] | None:
    record = finished_best(run)
    if record is None:
        return None
    return {task: record["tasks"][task][metric] for task, metric, _ in TASKS}


def table(runs: dict[int, dict[str, float]], single: dict[str, float]) -> str:
    header = "| model | " + " | ".join(label for _, _, label in TASKS) + " |"
    rows = [header, "|---" * (len(TASKS) + 1) + "|",
            "| single-task models (seed 11) | " + " | ".join(f"{single[t]:.4f}" for t, _, _ in TASKS) + " |"]
    for seed, record in sorted(runs.items()):
        rows.append(f"| multitask, seed {seed} | " + " | ".join(f"{record[t]:.4f}" for t, _, _ in TASKS) + " |")
    if runs:
        mean = {t: statistics.mean(r[t] for r in runs.values()) for t, _, _ in TASKS}
        spread = {t: max(r[t] for r in runs.values()) - min(r[t] for r in runs.values()) for t, _, _ in TASKS}
        rows.append(f"| **multitask, mean of {len(runs)}** | " + " | ".join(
            f"**{mean[t]:.4f}** ({mean[t] - single[t]:+.4f})" for t, _, _ in TASKS) + " |")
        rows.append("| seeds' spread (max - min) | " + " | ".join(f"{spread[t]:.4f}" for t, _, _ in TASKS) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gradient", default="imtl")
    parser.add_argument("--balancer", default="equal")
    parser.add_argument("--sampler", default="proportional_joint")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--out", default=str(ROOT / "runs" / "claim"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        run_mtbert("examples/best_multitask.toml", out / run_name(args, seed),
                   [f"sampler={args.sampler}", f"gradient={args.gradient}", f"balancer={args.balancer}",
                    f"seed={seed}", "train.save_every=0"])
    runs = {seed: record for seed in args.seeds if (record := scores(out / run_name(args, seed)))}
    text = table(runs, single_task_scores())
    (out / f"table-{run_name(args, 0)[:-3]}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
