"""What each balancer and gradient method costs per step, against the summed-loss step, interleaved.

    MTBERT_DATA=../shared/data/cs224n python benchmarks/step_cost.py [METHOD ...]
        [--rounds 5] [--steps 3] [--warmup 3] [--out benchmarks/out/step_cost.json]

bench.py's step/<method> rows time each method in its own process, one after
the other; on a shared 2-core machine the step time drifts by 10-20% over
minutes, more than most methods cost. Here one process per method holds two
trainers on the same data and checkpoint -- the summed-loss all-tasks step
and the method's -- and alternates between them: ``--rounds`` rounds of
``--steps`` optimizer steps each, after ``--warmup`` steps of both. Drift
then hits both alike; the ratio is the median over rounds of (method's time
/ summed step's time) in the same round, and the spread is its min..max.
MiniLM, a batch of 32 of each of the three course tasks per step, fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import ROOT, STEP_METHODS, all_tasks_trainer, mtbert_stepper, sync, TASKS  # noqa: E402
from common import machine, measure_in_subprocess, write_json  # noqa: E402

METHODS = [m for m in STEP_METHODS if m != "sum" and not m.startswith("smart")]


def timed(step, count: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    sync(device)
    return (time.perf_counter() - start) / count


def measure(args) -> dict:
    import torch

    torch.manual_seed(11)
    tasks = list(TASKS)
    budget = argparse.Namespace(**{**vars(args), "steps": args.rounds * args.steps})  # the schedule's length
    base = mtbert_stepper(all_tasks_trainer(budget, "sum"), tasks)
    other = mtbert_stepper(all_tasks_trainer(budget, args.one), tasks)
    timed(base, args.warmup, args.device)
    timed(other, args.warmup, args.device)
    rounds = []
    for i in range(args.rounds):  # alternate which goes first, so neither always follows the other
        first, second = (base, other) if i % 2 == 0 else (other, base)
        a, b = timed(first, args.steps, args.device), timed(second, args.steps, args.device)
        rounds.append((a, b) if i % 2 == 0 else (b, a))  # (sum, method)
    ratios = [m / s for s, m in rounds]
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "sum_s_per_step": statistics.median(s for s, _ in rounds),
            "method_s_per_step": statistics.median(m for _, m in rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", default=METHODS, metavar="METHOD", help=", ".join(METHODS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--encoder", default="minilm-l6")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "step_cost.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads = None
    if args.one:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    results = {}
    for method in args.methods:
        command = [sys.executable, __file__, "--one", method, "--rounds", str(args.rounds), "--steps",
                   str(args.steps), "--warmup", str(args.warmup), "--device", args.device, "--encoder", args.encoder]
        r, seconds = measure_in_subprocess(command, method)
        if r is None:
            continue
        results[method] = r
        print(f"{method:20s} {r['ratio']:.3f}x (rounds {r['ratio_min']:.3f}..{r['ratio_max']:.3f})  ({seconds:.0f}s)",
              flush=True)
        write_json(args.out, {"args": {k: v for k, v in vars(args).items() if k != "one"},
                              "machine": {**machine(), "device": args.device}, "results": results})
    print("\n| method | x summed step (median) | rounds min..max | s per step (method / sum) |\n|---|---|---|---|")
    for method, r in results.items():
        print(f"| `{method}` | {r['ratio']:.3f} | {r['ratio_min']:.3f}..{r['ratio_max']:.3f} | "
              f"{r['method_s_per_step']:.2f} / {r['sum_s_per_step']:.2f} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
