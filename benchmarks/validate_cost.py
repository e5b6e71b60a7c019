"""What `mtbert validate` costs against a bare `import torch`, measured back to back.

    python benchmarks/validate_cost.py [--rounds 7] [--spec examples/baseline.toml]

Each round runs ``python -c "import torch"`` and ``mtbert validate SPEC`` one after the other (which
goes first alternates), in fresh processes; the figures are the medians over rounds and the median
of the per-round differences (what validation adds to the import every command pays).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--spec", default="examples/baseline.toml")
    args = parser.parse_args()
    torch_only = [sys.executable, "-c", "import torch"]
    validate = [str(Path(sys.executable).with_name("mtbert")), "validate", args.spec]
    seconds(torch_only), seconds(validate)  # warm the file cache
    rows = []
    for i in range(args.rounds):
        order = [torch_only, validate] if i % 2 == 0 else [validate, torch_only]
        times = {id(c): seconds(c) for c in order}
        rows.append((times[id(torch_only)], times[id(validate)]))
    bare, full = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    extra = statistics.median(v - t for t, v in rows)
    print(f"import torch: {bare:.2f} s   mtbert validate {args.spec}: {full:.2f} s   "
          f"difference (median of rounds): {extra:+.2f} s  ({args.rounds} rounds)")


if __name__ == "__main__":
    main()
