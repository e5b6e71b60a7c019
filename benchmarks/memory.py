"""Long-run memory: resident memory must stay flat over many training steps.

    python benchmarks/memory.py [--steps 3000] [--encoder tiny|minilm-l6]

Trains the three course tasks for ``--steps`` optimizer steps through the
real loop (evaluations, checkpoints and resumable states included, on a
1,000-row slice of each file so that evaluations stay cheap) and reads the
process's resident set size after the first 10% of the steps (once
allocator caches and lazy imports have settled) and at the end. A leak of
anything per step (a tensor kept in a list, an autograd graph held by a
logged loss) shows up as growth; the target is under 5%. Writes
benchmarks/out/memory.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import machine, write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MTBERT_DATA") or ROOT.parent / "shared" / "data" / "cs224n")
TINY = {"name": "minbert", "pretrained": "minilm-l6", "init": "random", "num_layers": 2, "hidden_size": 32,
        "num_heads": 2, "intermediate_size": 64}


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    import tomllib

    from mtbert.plugin.loading import default_registry
    from mtbert.runs.rundir import RunDir
    from mtbert.config.spec import structure_spec
    from mtbert.training.loop import Trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--encoder", default="tiny")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "memory.json"))
    args = parser.parse_args()

    data = tomllib.loads((ROOT / "examples" / "baseline.toml").read_text())
    data["encoder"] = TINY if args.encoder == "tiny" else {"name": "minbert", "pretrained": args.encoder}
    data["data"]["dir"] = str(DATA)
    data["train"] = {"steps": args.steps, "batch_size": 32, "lr": 5e-5, "eval_every": args.steps // 6,
                     "save_every": args.steps // 6, "log_every": 50}
    for task in data["tasks"].values():
        task["data"]["limit"] = 1000
    spec = structure_spec(data, default_registry())
    trainer = Trainer(spec, default_registry(), progress=False)

    samples = []
    original = trainer._update

    def update():
        stats = original()
        if trainer.step in (args.steps // 10, args.steps) or trainer.step % (args.steps // 20) == 0:
            samples.append((trainer.step, round(rss_mb(), 1)))
        return stats

    trainer._update = update
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer.fit(RunDir.create(spec, Path(tmp) / "run"))
    first = next(mb for step, mb in samples if step >= args.steps // 10)
    last = samples[-1][1]
    result = {"steps": args.steps, "encoder": args.encoder, "rss_mb_after_10pct": first, "rss_mb_end": last,
              "growth_pct": round(100 * (last - first) / first, 2), "samples": samples,
              "seconds": round(time.perf_counter() - started, 1),
              "machine": machine()}
    out = write_json(args.out, result)
    print(f"resident memory: {first} MB after {args.steps // 10} steps, {last} MB after {args.steps} "
          f"({result['growth_pct']:+.2f}%) -> {out}")


if __name__ == "__main__":
    main()
