"""Does SMART on a fraction of each batch keep the full method's effect? A seed study.

Runs one single-task example (default SST) with no regularizer, SMART on every
row (the paper's method) and SMART on a fraction of the rows, over several
seeds, then prints each variant's dev score per seed and its mean and standard
deviation. Finished runs are reused and stopped ones resume, so the script can
be stopped and restarted. Runs go one at a time: two at once on
a 2-core CPU only slow each other down.

    MTBERT_DATA=../shared/data/cs224n python benchmarks/smart_seeds.py --task sst --seeds 11 12 13
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import machine, write_json
from run_experiments import ROOT, run_mtbert

VARIANTS = {  # name -> --set overrides
    "none": [],
    "smart_f1.0": ['regularizers=[{name="smart",bregman=false,fraction=1.0}]'],
    "smart_f0.5": ['regularizers=[{name="smart",bregman=false,fraction=0.5}]'],
}


def run(task: str, variant: str, seed: int, out: Path) -> dict | None:
    run_dir = out / f"{task}_{variant}_s{seed}"
    overrides = [f"seed={seed}", f"name={run_dir.name}", "train.save_every=0", *VARIANTS[variant]]
    if not run_mtbert(f"examples/single_task_{task}.toml", run_dir, overrides):
        return None
    return json.loads((run_dir / "best.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst", choices=["sst", "para", "sts"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "runs" / "smart_seeds"))
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    scores: dict[str, dict[int, float]] = {v: {} for v in args.variants}
    seconds: dict[str, dict[int, float]] = {v: {} for v in args.variants}
    for seed in args.seeds:  # seed-major, so a stopped study still has whole seeds
        for variant in args.variants:
            best = run(args.task, variant, seed, out)
            if best is not None:
                scores[variant][seed] = best["overall"]
                seconds[variant][seed] = best["elapsed_s"]

    print(f"\n{args.task} dev score (the spec's first metric), per seed; mean and sample std over seeds")
    print("variant      " + "".join(f"  s{s:<6}" for s in args.seeds) + "    mean     std   s/run")
    for variant in args.variants:
        got = [scores[variant].get(s) for s in args.seeds]
        done = [g for g in got if g is not None]
        mean = statistics.mean(done) if done else float("nan")
        std = statistics.stdev(done) if len(done) > 1 else float("nan")
        secs = statistics.mean(seconds[variant].values()) if done else float("nan")
        cells = "".join(f"  {g:.4f}" if g is not None else "       -" for g in got)
        print(f"{variant:<12}{cells}  {mean:.4f}  {std:.4f}  {secs:6.0f}")
    if args.json:
        write_json(args.json, {"task": args.task, "scores": scores, "elapsed_s": seconds, "machine": machine()})


if __name__ == "__main__":
    main()
