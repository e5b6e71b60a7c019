"""What the check-free T x T solvers cost per call, beside torch.linalg's, on this machine.

    python benchmarks/smalllinalg_cost.py [--tasks 3 8 16] [--blocks 1 100] [--calls 50] [--device cpu]

Nash-MTL, IMTL-G and Aligned-MTL call ``mtbert.toolkit.smalllinalg`` once per
optimizer step (Nash-MTL: ``solve_spd`` once per Newton iteration, 20 by
default) on [blocks, T, T] float64 Gram matrices: one block for the whole
model, about 100 per layer or per tensor. torch.linalg's ``eigh`` and
``solve`` do the same work in one LAPACK call but check their result on the
host, which on a GPU waits for it. The table gives milliseconds per call
(median of ``--calls`` after warm-up) for both, to set beside a step's time
(2-3 s for the three-task MiniLM step on a 2-core CPU, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_json  # noqa: E402

from mtbert.toolkit.smalllinalg import solve_spd, symmetric_eigen  # noqa: E402


def median_ms(function, calls: int, device: torch.device) -> float:
    function()  # warm-up: allocations, the index tensors' first copy
    times = []
    for _ in range(calls):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 8, 16])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/out/smalllinalg-cost.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    rows = []
    print("| T | blocks | symmetric_eigen ms | torch.linalg.eigh ms | solve_spd ms | torch.linalg.solve ms |")
    print("|---|---|---|---|---|---|")
    for tasks in args.tasks:
        for blocks in args.blocks:
            gradients = torch.randn(blocks, tasks, 64, generator=generator, dtype=torch.float64)
            gram = (gradients @ gradients.transpose(1, 2)).to(device)
            rhs = torch.randn(blocks, tasks, generator=generator, dtype=torch.float64).to(device)
            row = {"tasks": tasks, "blocks": blocks,
                   "symmetric_eigen_ms": median_ms(lambda: symmetric_eigen(gram), args.calls, device),
                   "eigh_ms": median_ms(lambda: torch.linalg.eigh(gram), args.calls, device),
                   "solve_spd_ms": median_ms(lambda: solve_spd(gram, rhs), args.calls, device),
                   "solve_ms": median_ms(lambda: torch.linalg.solve(gram, rhs), args.calls, device)}
            rows.append(row)
            print(f"| {tasks} | {blocks} | {row['symmetric_eigen_ms']:.2f} | {row['eigh_ms']:.3f} | "
                  f"{row['solve_spd_ms']:.3f} | {row['solve_ms']:.3f} |", flush=True)
    write_json(args.out, {"machine": machine(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
