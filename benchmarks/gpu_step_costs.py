"""Every gradient method's and balancer's step against the summed step, at T = 3 and T = 8, in one process.

    python benchmarks/gpu_step_costs.py [--device cuda] [--encoder minilm-random] [--tasks 3 8]
                                        [--rounds 5] [--steps 3] [--warmup 3] [--out FILE]

step_cost.py starts a process per method (a torch import and two trainers
each): on a lent GPU's few minutes that is most of the time. Here one
process holds the summed-loss trainer of each T and builds each method's
trainer in turn beside it, alternating their steps as step_cost.py does:
``--rounds`` rounds of ``--steps`` optimizer steps after ``--warmup``, the
ratio the median over rounds of (method / summed step) in the same round.
T = 3: the three course tasks, batch 32 each; T = 8: eight copies of SST
(task_scaling.py's setting: its first 256 rows, batch 8, length 64).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import task_scaling  # noqa: E402
from common import machine, write_json  # noqa: E402

GRADIENTS = ["pcgrad", "gradvac", "mgda", "mgda_ub", "imtl", "cagrad", "nash_mtl", "aligned_mtl", "db_mtl", "graddrop"]
BALANCERS = ["uncertainty", "dwa", "rlw", "gls", "famo", "imtl_l", "gradnorm"]
TARGETS = {"gradient": 1.15, "balancer": 1.05}  # issue 29's: at most these times the summed step


def kind(method: str) -> str:
    return "gradient" if method in GRADIENTS else "balancer"


def stepper(args, method: str, count: int):
    """One optimizer step of ``method`` at T = ``count`` tasks (a built, prepared trainer)."""
    from mtbert.plugin.loading import default_registry
    from mtbert.training.loop import Trainer

    if count == 3:
        budget = argparse.Namespace(**{**vars(args), "steps": args.rounds * args.steps + args.warmup})
        return bench.mtbert_stepper(bench.all_tasks_trainer(budget, method if method != "sum" else "sum"),
                                    list(bench.TASKS))
    scaled = argparse.Namespace(**{**vars(args), "rows": 256, "batch_size": 8, "max_length": 64,
                                   "steps": args.rounds * args.steps, "warmup": args.warmup})
    spec = task_scaling.spec_for(scaled, count, method)
    trainer = Trainer(spec, default_registry(), progress=False)
    return bench.mtbert_stepper(trainer, list(spec.tasks))


def timed(step, count: int, device: str) -> float:
    bench.sync(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    bench.sync(device)
    return (time.perf_counter() - start) / count


def measure(args, base, method: str, count: int) -> dict:
    other = stepper(args, method, count)
    timed(other, args.warmup, args.device)
    rounds = []
    for i in range(args.rounds):
        first, second = (base, other) if i % 2 == 0 else (other, base)
        a, b = timed(first, args.steps, args.device), timed(second, args.steps, args.device)
        rounds.append((a, b) if i % 2 == 0 else (b, a))  # (sum, method)
    ratios = [m / s for s, m in rounds]
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "sum_s_per_step": statistics.median(s for s, _ in rounds),
            "method_s_per_step": statistics.median(m for _, m in rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=GRADIENTS + BALANCERS)
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--encoder", default="minilm-random")
    parser.add_argument("--deadline", type=float, default=None, help="stop starting methods after this many seconds")
    parser.add_argument("--out", default=str(bench.ROOT / "benchmarks" / "out" / "gpu-step-costs.json"))
    args = parser.parse_args()
    args.threads = None
    import torch

    torch.manual_seed(11)
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for count in args.tasks:
        base = stepper(args, "sum", count)
        timed(base, args.warmup, args.device)
        for method in args.methods:
            if args.deadline is not None and time.perf_counter() - started > args.deadline:
                print(f"deadline: {method}@{count} and later not measured", flush=True)
                break
            try:
                results[f"{method}@{count}"] = r = measure(args, base, method, count)
            except Exception as error:  # one method's failure is recorded, the others still run
                results[f"{method}@{count}"] = {"error": f"{type(error).__name__}: {error}"}
                print(f"{method}@{count}: FAILED {error}", flush=True)
                continue
            print(f"{method + '@' + str(count):20s} {r['ratio']:.3f}x (rounds {r['ratio_min']:.3f}..{r['ratio_max']:.3f})",
                  flush=True)
            save(args, results, started)  # after each method: a stage stopped at its time limit keeps them
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
        del base
    save(args, results, started)
    print(json.dumps({"written": args.out}))


def save(args, results: dict, started: float) -> None:
    write_json(args.out, {"args": vars(args), "machine": {**machine(), "device": args.device},
                          "seconds": round(time.perf_counter() - started, 1), "results": results})


if __name__ == "__main__":
    main()
