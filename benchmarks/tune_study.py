"""A real study on MiniLM and the course tasks: does `mtbert tune` find a spec that beats
examples/best_multitask.toml at the same budget, by more than the seed spread?

1. The budget: best_multitask with its epochs replaced by --steps optimizer steps (two evaluations)
   and Quora cut to its first --para-rows rows (train and dev), written as <out>/baseline.toml; the same spec with a [tune] table (the space below) as
   <out>/study.toml.
2. `mtbert tune <out>/study.toml --trials N` (TPE, median pruning at the first evaluation).
3. The study's best.toml and baseline.toml, each over --seeds, at that budget: the overall dev
   score per seed, mean and spread, written to <out>/seeds.json and printed.

Finished runs are reused and the study continues, so the script can be stopped and started again.
One run at a time: on a 2-core CPU two would only slow each other down.

    MTBERT_DATA=../shared/data/cs224n python benchmarks/tune_study.py --steps 400 --para-rows 6000 --trials 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

from run_experiments import MTBERT, ROOT, run_mtbert

SPACE = {
    "sampler": "tpe", "pruner": "median", "startup_trials": 3, "objectives": ["overall"],
    "params": {
        "train.lr": {"type": "float", "low": 2e-5, "high": 4e-4, "log": True},
        "sampler": {"type": "choice", "values": ["proportional", "round_robin"]},
        "tasks.sst.weight": {"type": "float", "low": 0.5, "high": 2.0},
        "tasks.sts.weight": {"type": "float", "low": 0.5, "high": 2.0},
        "scheduler.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
    },
}


def budgeted(steps: int, para_rows: int) -> dict:
    """best_multitask at a session's budget: ``steps`` optimizer steps (two evaluations), and the first
    ``para_rows`` rows of each Quora file (its 20k dev pairs would cost more than the training)."""
    data = tomllib.loads((ROOT / "examples" / "best_multitask.toml").read_text())
    data["train"].pop("epochs", None)
    data["train"].update(steps=steps, eval_every=steps // 2, save_every=0)
    data["tasks"]["para"]["data"]["limit"] = para_rows
    return data


def seeds_of(spec: Path, label: str, seeds: list[int], out: Path) -> tuple[dict[int, float], dict[int, dict]]:
    """Each seed's run: (seed -> overall dev score, seed -> each task's main (first) dev metric)."""
    scores, tasks = {}, {}
    for seed in seeds:
        run_dir = out / f"{label}_s{seed}"
        if run_mtbert(str(spec), run_dir, [f"seed={seed}", f"name={run_dir.name}"]):
            best = json.loads((run_dir / "best.json").read_text())
            scores[seed] = best["overall"]
            tasks[seed] = {task: next(iter(metrics.values())) for task, metrics in best["tasks"].items()}
    return scores, tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--para-rows", type=int, default=6000)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default=str(ROOT / "runs" / "tune_study"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = budgeted(args.steps, args.para_rows)
    data["name"] = "best_multitask_budget"
    (out / "baseline.toml").write_text(tomli_w.dumps(data))
    data["name"] = "tuned"
    (out / "study.toml").write_text(tomli_w.dumps({**data, "tune": SPACE}))

    study = out / "study"
    command = [*MTBERT, "tune", str(out / "study.toml"), "--trials", str(args.trials), "--out", str(study)]
    print(" ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=False)
    if not (study / "best.toml").is_file():
        sys.exit(f"the study has no best trial yet; see {study / 'summary.md'}")

    results = {"steps": args.steps, "para_rows": args.para_rows, "trials": args.trials, "seeds": args.seeds}
    for name, spec in (("best", study / "best.toml"), ("baseline", out / "baseline.toml")):
        results[name], results[f"{name}_tasks"] = seeds_of(spec, name, args.seeds, out)
    (out / "seeds.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\noverall dev score at {args.steps} steps, per seed; mean and sample std; each task's main metric, "
          "mean over the seeds")
    for name in ("best", "baseline"):
        scores, tasks = results[name], results[f"{name}_tasks"]
        spread = statistics.stdev(scores.values()) if len(scores) > 1 else float("nan")
        means = {task: statistics.mean(t[task] for t in tasks.values()) for task in next(iter(tasks.values()), {})}
        print(f"{name:<9}" + "".join(f"  s{s} {v:.4f}" for s, v in scores.items())
              + f"   mean {statistics.mean(scores.values()):.4f}  std {spread:.4f}  "
              + "  ".join(f"{task} {value:.4f}" for task, value in means.items()))


if __name__ == "__main__":
    main()
