"""How the cost of each balancer and gradient method grows with the number of tasks.

    python benchmarks/task_scaling.py [--tasks 2 4 8 16] [--methods sum pcgrad ...]
                                      [--steps 3] [--warmup 2] [--batch-size 8] [--max-length 64]
                                      [--out benchmarks/out/task_scaling.json]

T copies of the SST task (its first ``--rows`` training rows each; copies are
as good as distinct tasks for cost: every task has its own head, batch, loss
and per-task gradient) train with the all-tasks sampler on MiniLM, one batch
of each task per optimizer step. For every method and T, in its own
subprocess (so the peak is its own): seconds per optimizer step over
``--steps`` steps after ``--warmup``, and the peak resident memory (CPU) or
peak CUDA memory. The table gives each against ``sum`` at the same T -- the
ratio of step time and the extra memory -- which is what a method costs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import ROOT, encoder_table, mtbert_stepper, peak_memory_mb, seconds_per_step, task_files, TASKS  # noqa: E402
from common import machine, measure_in_subprocess, write_json  # noqa: E402

METHODS = {  # name -> top-level spec changes
    "sum": {},
    "uncertainty": {"balancer": "uncertainty"},
    "dwa": {"balancer": "dwa"},
    "rlw": {"balancer": "rlw"},
    "gls": {"balancer": "gls"},
    "famo": {"balancer": "famo"},
    "imtl_l": {"balancer": "imtl_l"},
    "gradnorm": {"balancer": "gradnorm"},
    "pcgrad": {"gradient": "pcgrad"},
    "gradvac": {"gradient": "gradvac"},
    "mgda": {"gradient": "mgda"},
    "mgda_ub": {"gradient": "mgda_ub"},
    "imtl": {"gradient": "imtl"},
    "cagrad": {"gradient": "cagrad"},
    "nash_mtl": {"gradient": "nash_mtl"},
    "aligned_mtl": {"gradient": "aligned_mtl"},
    "db_mtl": {"gradient": "db_mtl"},
    "graddrop": {"gradient": "graddrop"},
}


def spec_for(args, count: int, method: str):
    from mtbert.plugin.loading import default_registry
    from mtbert.config.spec import structure_spec

    files = {**task_files("sst"), "limit": args.rows}
    head, loss = TASKS["sst"][4], TASKS["sst"][5]
    data = {
        "name": "scaling", "seed": 11, "encoder": encoder_table(args), "sampler": "all_tasks",
        "data": {"dir": str(ROOT.parent / "shared" / "data" / "cs224n"), "max_length": args.max_length},
        "train": {"steps": args.warmup + args.steps, "batch_size": args.batch_size, "lr": 5e-5,
                  "device": args.device, "log_every": 10**6, "save_every": 0},
        "tasks": {f"sst{i}": {"data": files, "head": head, "loss": loss, "metrics": ["accuracy"]}
                  for i in range(count)},
        **METHODS[method],
    }
    if os.environ.get("MTBERT_DATA"):
        data["data"]["dir"] = os.environ["MTBERT_DATA"]
    return structure_spec(data, default_registry())


def measure(args) -> dict:
    import torch
    from mtbert.plugin.loading import default_registry
    from mtbert.training.loop import Trainer

    torch.manual_seed(11)
    method, count = args.one.split("@")
    spec = spec_for(args, int(count), method)
    trainer = Trainer(spec, default_registry(), progress=False)
    seconds = seconds_per_step(args, mtbert_stepper(trainer, list(spec.tasks)))
    return {"s_per_step": seconds, "peak_memory_mb": peak_memory_mb(args.device)}


def table(results: dict, counts: list[int], methods: list[str]) -> str:
    lines = ["| method | " + " | ".join(f"T={t}: time x sum, +memory" for t in counts) + " |",
             "|---|" + "---|" * len(counts)]
    for method in methods:
        cells = []
        for t in counts:
            ours, base = results.get(f"{method}@{t}"), results.get(f"sum@{t}")
            if not ours or not base:
                cells.append("-")
                continue
            cells.append(f"{ours['s_per_step'] / base['s_per_step']:.2f}x, "
                         f"{ours['peak_memory_mb'] - base['peak_memory_mb']:+.0f} MB")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("| (sum itself) | " + " | ".join(
        f"{results[f'sum@{t}']['s_per_step']:.2f} s, {results[f'sum@{t}']['peak_memory_mb']:.0f} MB"
        if f"sum@{t}" in results else "-" for t in counts) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rows", type=int, default=256, help="training rows read per task copy")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--encoder", default="minilm-l6")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "task_scaling.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return
    if "sum" not in args.methods:
        args.methods.insert(0, "sum")
    results = {}
    for count in args.tasks:
        for method in args.methods:
            name = f"{method}@{count}"
            command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
                       "--max-length", str(args.max_length), "--rows", str(args.rows),
                       "--device", args.device, "--encoder", args.encoder]
            result, seconds = measure_in_subprocess(command, name)
            if result is None:
                continue
            results[name] = result
            print(f"{name:18s} {json.dumps(result)}  ({seconds:.0f}s)", flush=True)
            write_json(args.out, {"args": {k: v for k, v in vars(args).items() if k != "one"},
                                  "machine": {**machine(), "device": args.device}, "results": results})
    print()
    print(table(results, args.tasks, args.methods))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
