"""How far each gradient method's update is from the exact answer, per case family (T = 2..8).

For every gradient method, on every case family of mtbert.testing.cases (well-conditioned,
nearly parallel, nearly opposite, one zero gradient, norms spread from 1e-3 to 1e3, exactly and
nearly dependent), T = 2..8 tasks, P = 10 and 1,000 values, three seeds each: the largest
relative error |d - d*| / max(|d*|, 1e-3 max_t |g_t|) against the exact float64 answer of
mtbert.testing.references (faces enumerated for MGDA, cvxpy's Clarabel for CAGrad, an
eigendecomposition for IMTL-G and Aligned-MTL, the loops written out for PCGrad, GradVac,
DB-MTL and GradDrop with the method's own random draws). Nash-MTL has no closed form: where it
answers with weights, its row is the largest |alpha_t (G alpha)_t - 1| (tasks with a non-zero
gradient); where it answers "no solution" (alpha = 0, d = 0), 0 if the non-zero gradients' min-norm
point is within 2 T float32 epsilons of the largest gradient (stationary at the rows' precision),
and 1 (a failure) if it is further. MGDA-UB's row: its closed-form weights on orthogonal gradients
of each case's norms against the enumerated min-norm point.

    python benchmarks/aggregator_accuracy.py [--seeds 3] [--out benchmarks/results/cpu/aggregator-accuracy.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402

from mtbert.model.build import make  # noqa: E402
from mtbert.plugin.interfaces import LoopContext  # noqa: E402
from mtbert.plugin.loading import default_registry  # noqa: E402
from mtbert.config.spec import structure_component  # noqa: E402
from mtbert.testing import references  # noqa: E402
from mtbert.testing.cases import FAMILIES, case  # noqa: E402
from mtbert.toolkit.pertask import ROW_EPS, rank_tolerance  # noqa: E402

METHODS = ["sum", "pcgrad", "gradvac", "mgda", "imtl", "cagrad", "nash_mtl", "aligned_mtl", "db_mtl", "graddrop",
           "mgda_ub"]


def built(registry, name, tasks, size, **options):
    method = make(registry, structure_component("gradients", {"name": name, **options}, registry))
    parameter = nn.Parameter(torch.zeros(size))
    if name != "sum":
        method.setup([("encoder.w", parameter)], [], [f"t{i}" for i in range(tasks)], LoopContext())
    return method, parameter


def run_once(method, parameter, rows, losses):
    """One optimizer step of ``method`` on task gradients ``rows`` with loss values ``losses``."""
    parameter.grad = None
    method.backward({f"t{i}": (g * parameter).sum() - (g * parameter).sum().detach() + v
                     for i, (g, v) in enumerate(zip(rows, losses))})
    method.finish()
    return parameter.grad.detach().double()


def relative(actual, exact, rows) -> float:
    floor = 1e-3 * float(rows.double().norm(dim=1).max())
    return float((actual - exact).norm()) / max(float(exact.norm()), floor, 1e-300)


def error_of(registry, name, rows, seed) -> float:
    tasks, size = rows.shape
    losses = torch.linspace(0.5, 2.0, tasks)
    if name == "mgda_ub":
        from mtbert_plugins.gradients.mgda_ub import orthogonal_min_norm_weights
        squared = rows.double().norm(dim=1) ** 2
        weights = orthogonal_min_norm_weights(squared)
        orthogonal = torch.diag(squared.sqrt())  # orthogonal vectors of the case's norms
        return relative(weights @ orthogonal, references.min_norm_point(orthogonal), orthogonal)
    method, parameter = built(registry, name, tasks, size, **({"seed": seed} if name in ("pcgrad", "gradvac",
                                                                                          "graddrop") else {}))
    if name in ("pcgrad", "gradvac"):
        state = method.generator.get_state()
        d = run_once(method, parameter, rows, losses)
        method.generator.set_state(state)
        return relative(d, getattr(references, name)(rows, method.partners(tasks)), rows)
    if name == "graddrop":
        from mtbert_plugins.gradients.graddrop import signed_draws
        replay = torch.Generator().manual_seed(0)
        replay.set_state(method.draws.get_state())
        d = run_once(method, parameter, rows, losses)
        uniforms = (signed_draws(torch.empty_like(method.bits), replay)[:size].double() * 2.0 ** -31 + 1) / 2
        return relative(d, references.graddrop(rows, uniforms), rows)
    d = run_once(method, parameter, rows, losses)
    if name == "nash_mtl":
        alpha = method.alpha[0]
        if bool((alpha > 0).any()):
            return references.nash_error(rows, alpha)
        norms = rows.double().norm(dim=1)
        present = rows[norms ** 2 > norms.max() ** 2 * rank_tolerance(tasks)]
        distance = float(references.min_norm_point(present).norm()) / float(norms.max())
        return 0.0 if distance <= 2 * tasks * ROW_EPS and float(d.norm()) == 0 else 1.0
    exact = {"sum": lambda: rows.double().sum(0), "mgda": lambda: references.mgda(rows),
             "imtl": lambda: references.imtl(rows), "cagrad": lambda: references.cagrad(rows),
             "aligned_mtl": lambda: references.aligned_mtl(rows),
             "db_mtl": lambda: references.db_mtl_first_step(rows, losses)}[name]()
    return relative(d, exact, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--out", default="benchmarks/results/cpu/aggregator-accuracy.json")
    args = parser.parse_args()
    registry = default_registry()
    table: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for name in args.methods:
        table[name] = {}
        for family in FAMILIES:
            worst = 0.0
            for tasks in range(2, 9):
                for size in (10, 1000):
                    for seed in range(args.seeds):
                        worst = max(worst, error_of(registry, name, case(family, tasks, size, 100 * tasks + seed), seed))
            table[name][family] = worst
        print(f"{name:12s} " + "  ".join(f"{family} {table[name][family]:.1e}" for family in FAMILIES), flush=True)
    print()
    print("| method | " + " | ".join(FAMILIES) + " |")
    print("|---|" + "---|" * len(FAMILIES))
    for name, row in table.items():
        print(f"| `{name}` | " + " | ".join(f"{row[f]:.1e}" for f in FAMILIES) + " |")
    path = write_json(args.out, {"machine": machine(), "seconds": round(time.perf_counter() - started, 1),
                                 "seeds": args.seeds, "tasks": [2, 8], "sizes": [10, 1000], "errors": table})
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
