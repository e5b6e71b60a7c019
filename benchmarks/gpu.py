"""Issue 29's GPU run: every measurement a lent GPU should make, most wanted first, inside a deadline.

    python benchmarks/gpu.py [--out DIR] [--budget 450]            # on the GPU machine (benchmarks/gpu.sh)
    python benchmarks/gpu.py --device cpu --dry --out DIR           # the same stages on the CPU, tiny, a test

Stages, each a subprocess stopped at its own share of the budget (what it
had written stays), in this order:

1. ``tests/training/test_cuda.py`` -> cuda_tests.log
2. where a bert-base-shaped training step's time goes, mtbert's loop and the
   plain PyTorch loop (wall against kernel time, kernels per step, host
   waits; ``profile_step.py``) -> profile.txt
3. training and evaluation examples/s against the Hugging Face Trainer,
   batch 32, MiniLM's shape and bert-base's, random weights (the speed does
   not depend on the weights' values) -> bench-minilm.json, bench-bert-base.json
4. model FLOPs utilisation of the bert-base-shaped step at fixed shapes up to
   128 x 512 -> mfu.json
5. every gradient method's and balancer's step against the summed step at
   T = 3 and T = 8 (``gpu_step_costs.py``; it stops starting methods before
   its share ends) -> step-costs.json
6. the prepared fixes against the default, MiniLM's shape, in one stage with
   the rest of the budget: the encoder's ``unpad = true`` (no work on
   padding; FlashAttention's variable-length kernel where attention has no
   dropout) in training and evaluation, then training with
   ``train.compile_mode = "reduce-overhead"`` (CUDA graphs) -> fixes.json

then summary.md, the table printed last: each figure against issue 29's
targets (train >= 1.5x and eval >= 2x the Trainer's examples/s, gradient
methods <= 1.15x and balancers <= 1.05x the summed step at T = 3, the
128 x 512 step >= 40% of the chip's bf16 dense peak), after each stage's
command, exit status and seconds. At most 8 files, in one folder.
``--dry`` runs every stage on the tiny encoder with a few steps (what
tests/commands/test_gpu_script.py does on the CPU, so no device minute is lost to a
typo).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS = {"train": 1.5, "eval": 2.0, "gradient": 1.15, "balancer": 1.05, "mfu": 0.40}


def stages(args) -> list[tuple[str, list[str], str, float]]:
    """(name, command, output file, share of the budget) in the order they run."""
    py, out = sys.executable, Path(args.out)
    dry = args.dry
    device = ["--device", args.device]
    small, big = ("tiny", "tiny") if dry else ("minilm-random", "bert-base-random")
    steps = ["--steps", "2", "--warmup", "1"] if dry else ["--steps", "30", "--warmup", "5"]
    peers = ["train/sst/mtbert", "train/sst/hf_trainer", "eval/sst/mtbert", "eval/sst/hf_trainer"]
    shapes = ["mfu/fixed/2x16"] if dry else ["mfu/fixed/64x128", "mfu/fixed/128x512"]
    costs = ["--methods", "pcgrad", "famo", "--tasks", "3", "--rounds", "1", "--steps", "1", "--warmup", "1"] \
        if dry else ["--tasks", "3", "8"]
    profile = [py, str(HERE / "profile_step.py"), *device, "--encoder", big, "--rows", "12",
               *(["--steps", "2", "--warmup", "1"] if dry else ["--steps", "10", "--warmup", "5"])]
    return [
        ("cuda tests", [py, "-m", "pytest", "tests/training/test_cuda.py", "-q", "-p", "no:cacheprovider"],
         "cuda_tests.log", 0.2),
        ("profile", ["bash", "-c", f"{' '.join(profile)} --impl mtbert; {' '.join(profile)} --impl plain"],
         "profile.txt", 0.12),
        ("peers minilm", [py, str(HERE / "bench.py"), *device, "--encoder", small, *steps, "--only", *peers,
                          "--out", str(out / "bench-minilm.json")], None, 0.2),
        *([] if dry else [  # (a dry run's two encoders are the same tiny one)
            ("peers bert-base", [py, str(HERE / "bench.py"), *device, "--encoder", big, *steps, "--only", *peers,
                                 "--out", str(out / "bench-bert-base.json")], None, 0.2)]),
        ("mfu", [py, str(HERE / "bench.py"), *device, "--encoder", big, *steps, "--only", *shapes,
                 "--out", str(out / "mfu.json")], None, 0.1),
        # issue 29's targets first: the step costs (T = 3 before T = 8), within their share
        ("step costs", [py, str(HERE / "gpu_step_costs.py"), *device, "--encoder", small, *costs,
                        "--out", str(out / "step-costs.json")], None, 0.3),
        # the prepared fixes, each against the default in the same stage, with the rest of the budget:
        # the unpadded encoder (first: quick), then CUDA graphs through torch.compile (its compilation
        # takes the warm-up steps); bench.py writes after each measurement, so a cut keeps the first ones
        ("prepared fixes", [py, str(HERE / "bench.py"), *device, "--encoder", small, *steps, "--only",
                            "train/sst/mtbert", "train/sst/mtbert_unpad", "eval/sst/mtbert", "eval/sst/mtbert_unpad",
                            "train/sst/mtbert_graphs", "--out", str(out / "fixes.json")], None, 1.0),
    ]


def run_stage(name, command, output, seconds, out: Path, log: list[str]) -> None:
    """Run one stage (its output into ``output``, or discarded when the stage writes its own file);
    ``log`` gets its command and how it ended."""
    started = time.perf_counter()
    log.append(f"- {name}: `{' '.join(command)}` (at most {seconds:.0f} s)")
    target = open(out / output, "a") if output else subprocess.DEVNULL
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if name == "step costs":  # it stops starting methods itself, a little before its share runs out
        command = [*command, "--deadline", str(max(5.0, seconds - 45))]
    try:
        done = subprocess.run(command, cwd=ROOT, stdout=target, stderr=subprocess.STDOUT, timeout=seconds, env=env)
        status = f"exit {done.returncode}"
    except subprocess.TimeoutExpired:
        status = "stopped at its time limit"
    finally:
        if output:
            target.close()
    line = f"{name}: {status} after {time.perf_counter() - started:.0f} s"
    log.append(f"  {line}")
    print(line, flush=True)


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary(out: Path) -> str:
    """Every measured figure against its target; '-' where a stage did not get to it."""
    rows = ["| measurement | figure | target | met |", "|---|---|---|---|"]

    def row(what, value, target, higher_is_better=True, fmt="{:.2f}x"):
        if value is None:
            rows.append(f"| {what} | - | {target} | - |")
            return
        met = value >= target if higher_is_better else value <= target
        rows.append(f"| {what} | {fmt.format(value)} | {'>=' if higher_is_better else '<='} {target} | "
                    f"{'yes' if met else 'NO'} |")

    tests = (out / "cuda_tests.log").read_text() if (out / "cuda_tests.log").exists() else ""
    last = [line for line in tests.splitlines() if " in " in line and ("passed" in line or "failed" in line)]
    rows.append(f"| tests/training/test_cuda.py | {last[-1].strip('= ') if last else '-'} | all pass | "
                f"{'-' if not last else 'NO' if 'failed' in last[-1] or 'error' in last[-1] else 'yes'} |")
    for label, name in (("MiniLM", "bench-minilm.json"), ("bert-base", "bench-bert-base.json")):
        results = load(out / name).get("results", {})
        for kind in ("train", "eval"):
            ours, theirs = results.get(f"{kind}/sst/mtbert"), results.get(f"{kind}/sst/hf_trainer")
            ratio = ours["examples_per_s"] / theirs["examples_per_s"] if ours and theirs else None
            row(f"{kind} examples/s, mtbert / Trainer, {label}", ratio, TARGETS[kind])
    fixes = load(out / "fixes.json").get("results", {})
    for what, kind, name in (("unpad = true", "train", "mtbert_unpad"), ("unpad = true", "eval", "mtbert_unpad"),
                             ("CUDA graphs (compile_mode reduce-overhead)", "train", "mtbert_graphs")):
        base, fix = fixes.get(f"{kind}/sst/mtbert"), fixes.get(f"{kind}/sst/{name}")
        ratio = fix["examples_per_s"] / base["examples_per_s"] if base and fix else None
        rows.append(f"| {what} / default, {kind} examples/s, MiniLM | "
                    f"{'-' if ratio is None else f'{ratio:.2f}x'} | > 1 to make it the default | "
                    f"{'-' if ratio is None else 'yes' if ratio > 1 else 'no'} |")
    for shape, result in load(out / "mfu.json").get("results", {}).items():
        mfu = result.get("mfu")
        row(f"{shape} MFU (bf16 dense peak)", mfu, TARGETS["mfu"], fmt="{:.1%}")
    costs = load(out / "step-costs.json").get("results", {})
    from gpu_step_costs import kind  # noqa: E402
    for count in (3, 8):
        measured = {k.split("@")[0]: v for k, v in costs.items() if k.endswith(f"@{count}") and "ratio" in v}
        for group in ("gradient", "balancer"):
            members = {m: v["ratio"] for m, v in measured.items() if kind(m) == group}
            if not members:
                continue
            worst = max(members, key=members.get)
            label = f"worst {group} step / summed step at T = {count} ({worst})"
            if count == 3:
                row(label, members[worst], TARGETS[group], higher_is_better=False)
            else:
                rows.append(f"| {label} | {members[worst]:.2f}x | (T = 8: no target) | |")
        failed = [k for k, v in costs.items() if k.endswith(f"@{count}") and "error" in v]
        if failed:
            rows.append(f"| step costs that failed at T = {count} | {', '.join(failed)} | none | NO |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "gpu"))
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for every stage together")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--dry", action="store_true", help="tiny encoder, a few steps: check the script, not the GPU")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    started = time.perf_counter()
    log: list[str] = []
    for name, command, output, share in stages(args):
        left = args.budget - (time.perf_counter() - started)
        if left < 10:
            log.append(f"- {name}: not run, the budget is spent")
            print(f"{name}: not run, the budget is spent", flush=True)
            continue
        run_stage(name, command, output, min(left, share * args.budget), out, log)
    text = summary(out)
    (out / "summary.md").write_text("Stages:\n\n" + "\n".join(log) + "\n\n" + text + "\n")
    print(f"\n{len(list(out.iterdir()))} files in {out}; {time.perf_counter() - started:.0f} s\n")
    print(text)


if __name__ == "__main__":
    main()
