"""Where a training step's time goes: host (Python, launches) against device (kernels).

    python benchmarks/profile_step.py [--device cuda] [--encoder bert-base-random] [--batch 32]
                                      [--steps 20] [--warmup 10] [--impl mtbert|plain]
                                      [--method sum|pcgrad|gradvac|smart|...] [--out DIR]

Runs ``--warmup`` steps of one SST training loop (mtbert's, or the plain
PyTorch loop of bench.py; with ``--method``, mtbert's all-tasks step of
bench.py's step/<method> instead), then profiles ``--steps`` more with
torch.profiler and prints: wall seconds per step, kernel seconds per step
(the device's busy time), kernels launched per step, the host calls that
wait for the device (synchronize, pageable copies), matrix products per
step, and the operators that cost the most host time. A step whose wall time is far above its
kernel time is bound by the host, and the host table says by what.
A diagnosis tool, not a benchmark: its figures feed docs/benchmarks.md's
explanations, never its ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (the same models, data and spec as the benchmark)

# CUDA runtime calls that can hold the host until the device catches up (a pageable
# cudaMemcpyAsync does: it is staged through a pinned buffer the host must wait for).
WAITS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpyAsync"}
# Linear layers run as addmm forward and mm backward (input and weight gradients); attention as bmm
# or a fused kernel. Their counts show how many passes a step makes.
MATMULS = {"aten::addmm", "aten::mm", "aten::bmm"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--encoder", default="minilm-l6")
    parser.add_argument("--impl", default="mtbert", choices=["mtbert", "plain"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--method", choices=list(bench.STEP_METHODS), default=None,
                        help="profile an all-tasks step with this method instead of SST alone")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out", default=None, help="folder for the JSON summary and a Chrome trace")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(11)
    if args.method:
        step = bench.mtbert_stepper(bench.all_tasks_trainer(args, args.method), list(bench.TASKS))
    elif args.impl == "mtbert":
        step = bench.mtbert_stepper(bench.mtbert_trainer(args, ["sst"], {"batch_size": args.batch}), ["sst"])
    else:
        step = bench.plain_stepper(args, "sst", args.batch)
    for _ in range(args.warmup):
        step()
    bench.sync(args.device)

    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    bench.sync(args.device)
    wall = (time.perf_counter() - start) / args.steps  # without the profiler's own overhead

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        bench.sync(args.device)
    events = prof.key_averages()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_s = sum(e.time_range.elapsed_us() for e in kernels) / 1e6 / args.steps
    waits = {e.key: {"calls_per_step": e.count / args.steps, "ms_per_step": e.cpu_time_total / 1e3 / args.steps}
             for e in events if e.key in WAITS}
    matmuls = {e.key: e.count / args.steps for e in events if e.key in MATMULS}
    summary = {"impl": args.impl, "method": args.method, "encoder": args.encoder, "batch": args.batch,
               "device": args.device, "wall_s_per_step": wall, "kernel_s_per_step": kernel_s,
               "kernels_per_step": len(kernels) / args.steps, "waits": waits, "matmuls_per_step": matmuls}
    print(json.dumps(summary, indent=2))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if args.device == "cuda":
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = f"profile-{args.method or args.impl}-{args.encoder}-b{args.batch}"
        (out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
        prof.export_chrome_trace(str(out / f"{name}.trace.json"))


if __name__ == "__main__":
    main()
