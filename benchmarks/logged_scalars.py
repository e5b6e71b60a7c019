"""What a run logged to TensorBoard under a tag prefix: each tag's first, last, min, max and mean.

    python benchmarks/logged_scalars.py RUN [RUN ...] [--prefix gradient/weight/]

docs/results.md reads the task weights that gradient methods and balancers
log (``gradient/weight/<task>``, ``balancer/weight/<task>``,
``gradient/max_weight``) from the comparison's runs with it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from mtbert.commands.report import read_scalars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN")
    parser.add_argument("--prefix", default="", help="tag prefix, e.g. gradient/weight/ (default: every tag)")
    args = parser.parse_args()
    for run in args.runs:
        scalars = read_scalars(Path(run) / "tb", args.prefix)
        if not scalars:
            print(f"{run}: no scalars under '{args.prefix}'")
        for tag, points in sorted(scalars.items()):
            values = [v for _, v in points]
            print(f"{run}  {args.prefix}{tag}: first {values[0]:.3f} (step {points[0][0]})  last {values[-1]:.3f} "
                  f"(step {points[-1][0]})  min {min(values):.3f}  max {max(values):.3f}  "
                  f"mean {statistics.mean(values):.3f}  ({len(values)} points)")


if __name__ == "__main__":
    main()
