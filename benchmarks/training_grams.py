"""Do the exact solvers change the answers on the gradients training actually meets?

Runs the first ``--steps`` all-tasks steps of examples/best_multitask.toml (MiniLM, the three
course tasks; PCGrad, so training moves) at granularity "model" and "layer", keeps every
step's block Gram matrices, and compares, on each, the current solvers' weights with the
solvers mtbert used before issue 24, reconstructed here: MGDA's 100 Frank-Wolfe steps (the
paper's Algorithm 2), CAGrad's 50 pairwise Frank-Wolfe steps from equal weights, Nash-MTL's 20
unscaled damped Newton steps, IMTL-G's pseudo-inverse cut at float64's epsilon. The figure is
the largest |d_before - d_now| / |d_now| over the steps and blocks (d = sum_t w_t g_t, so
|d|^2 = w^T G w: a function of the Gram matrix alone).

    MTBERT_DATA=../shared/data/cs224n python benchmarks/training_grams.py [--steps 12]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402

from mtbert.plugin.loading import default_registry  # noqa: E402
from mtbert.config.spec import load_spec  # noqa: E402
from mtbert.toolkit.pertask import PerTaskGradients, normalized  # noqa: E402
from mtbert.toolkit.simplex import min_norm_weights  # noqa: E402
from mtbert.toolkit.smalllinalg import solve_spd, symmetric_eigen  # noqa: E402
from mtbert.training.loop import Trainer  # noqa: E402
from mtbert_plugins.gradients import cagrad, imtl, nash_mtl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def capture(steps: int, granularity: str) -> list[torch.Tensor]:
    registry = default_registry()
    spec = load_spec(ROOT / "examples" / "best_multitask.toml", registry,
                     overrides=("sampler=all_tasks", "gradient.name=pcgrad", f"gradient.granularity={granularity}"))
    seen = []
    original = PerTaskGradients.block_gram

    def record(self, G):
        gram = original(self, G)
        seen.append(gram.clone())
        return gram

    PerTaskGradients.block_gram = record
    try:
        trainer = Trainer(spec, registry, progress=False)
        trainer.prepare_phase(trainer.phases[0])
        plan = trainer.parts.sampler.plan(1)
        for index in range(steps):
            trainer.optimizer_step([plan[index]])
    finally:
        PerTaskGradients.block_gram = original
    return seen


# -- the solvers before issue 24 ----------------------------------------------------------------

def mgda_frank_wolfe(gram, iterations=100):
    blocks, count, _ = gram.shape
    alpha = gram.new_full((blocks, count), 1.0 / count)
    for _ in range(iterations):
        g_alpha = (gram @ alpha.unsqueeze(-1)).squeeze(-1)
        vertex = F.one_hot(g_alpha.argmin(-1), count).to(gram.dtype)
        v_g, v_v = (vertex * g_alpha).sum(-1), (alpha * g_alpha).sum(-1)
        g_g = (vertex * (gram @ vertex.unsqueeze(-1)).squeeze(-1)).sum(-1)
        gamma = ((v_v - v_g) / (v_v + g_g - 2 * v_g).clamp_min(1e-30)).clamp(0.0, 1.0)
        gamma = torch.where(g_g <= v_g, 1.0, torch.where(v_v <= v_g, 0.0, gamma))
        alpha = (1 - gamma)[:, None] * alpha + gamma[:, None] * vertex
    return alpha


def cagrad_weights(gram, w, c=0.4):
    radius = cagrad.ball_radius(gram, c)
    norm = torch.einsum("bi,bij,bj->b", w, gram, w).clamp_min(0).sqrt()
    return 1.0 / gram.shape[1] + (radius / norm.clamp_min(1e-30))[:, None] * w


def nash_unscaled(gram, iterations=20):
    n = gram.flatten(1).norm(dim=-1)
    g = gram / n[:, None, None]
    alpha = g.diagonal(dim1=1, dim2=2).clamp_min(1e-12).rsqrt()
    eye = torch.eye(g.shape[1], dtype=g.dtype)
    for _ in range(iterations):
        grad = (g @ alpha.unsqueeze(-1)).squeeze(-1) - 1.0 / alpha
        step = solve_spd(g + eye * (1.0 / (alpha * alpha)).unsqueeze(-1), grad)
        alpha = alpha - step / (1.0 + (grad * step).sum(-1).clamp_min(0).sqrt())[:, None]
    return alpha / n.sqrt()[:, None]


def imtl_float64_cut(gram):
    norms = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
    lam, vectors = symmetric_eigen(gram)
    kept = lam.abs() > lam.abs().amax(-1, keepdim=True) * gram.shape[-1] * torch.finfo(gram.dtype).eps
    inverse = torch.where(kept, 1.0 / torch.where(kept, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    raw = (vectors @ (inverse * (vectors.transpose(1, 2) @ norms.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)
    total = raw.sum(-1, keepdim=True)
    return torch.where(total.abs() < 1e-12, torch.zeros_like(raw), raw / total)


def current_cagrad(gram):
    unit = normalized(gram)
    w = cagrad.conflict_averse_weights(unit, 0.4)
    q = torch.einsum("bi,bij,bj->b", w, unit, w)
    cancelled = q <= (gram.shape[1] * torch.finfo(torch.float32).eps) ** 2 * unit.diagonal(dim1=1, dim2=2).amax(-1)
    scale = torch.where(cancelled, 0.0, cagrad.ball_radius(unit, 0.4) / torch.where(cancelled, 1.0, q).sqrt())
    return 1.0 / gram.shape[1] + scale[:, None] * w


PAIRS = {  # name -> (before, now): [B, T, T] float64 Gram -> [B, T] weights of d = sum_t w_t g_t
    "mgda": (mgda_frank_wolfe, lambda g: min_norm_weights(normalized(g))),
    "cagrad": (lambda g: cagrad_weights(g, cagrad.pairwise_frank_wolfe(
        g, cagrad.ball_radius(g, 0.4), g.new_full(g.shape[:2], 1.0 / g.shape[1]), 50)), current_cagrad),
    "nash_mtl": (nash_unscaled, lambda g: nash_mtl.bargaining_weights(g)),
    "imtl": (imtl_float64_cut, imtl.impartial_weights),
}


def change(before, now, gram) -> float:
    diff = before - now
    moved = torch.einsum("bi,bij,bj->b", diff, gram, diff).clamp_min(0).sqrt()
    size = torch.einsum("bi,bij,bj->b", now, gram, now).clamp_min(0).sqrt()
    live = size > 0  # a block whose gradients are all zero (the unused pooler) has no direction
    return float((moved[live] / size[live]).max()) if bool(live.any()) else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/cpu/training-grams.json")
    args = parser.parse_args()
    if not os.environ.get("MTBERT_DATA"):
        raise SystemExit("set MTBERT_DATA to the course data (../shared/data/cs224n)")
    results = {}
    for granularity in ("model", "layer"):
        grams = [g.double() for g in capture(args.steps, granularity)]
        for name, (before, now) in PAIRS.items():
            worst = max(change(before(g), now(g), g) for g in grams)
            results[f"{name}/{granularity}"] = worst
            print(f"{granularity:6s} {name:9s} largest |d_before - d_now| / |d_now| over {len(grams)} steps: {worst:.1e}",
                  flush=True)
    print(f"written: {write_json(args.out, {'machine': machine(), 'steps': args.steps, 'changes': results})}")


if __name__ == "__main__":
    main()
