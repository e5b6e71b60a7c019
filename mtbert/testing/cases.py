"""Task-gradient matrices that gradient methods get wrong: the case families of the accuracy checks.

Each family makes a [T, P] float32 matrix of task gradients (float32, as the
per-task rows of ``mtbert.toolkit.pertask`` hold them); exact answers are
computed from the float64 copy of those very values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

FAMILIES = ("well", "parallel", "opposite", "zero", "spread", "dependent", "nearly_dependent")


def case(family: str, tasks: int, size: int, seed: int) -> Tensor:
    """One [tasks, size] float32 gradient matrix of ``family``:

    - well: independent Gaussian gradients;
    - parallel: one direction, lengths 1..2, plus 1e-3 of noise;
    - opposite: one direction with alternating signs, lengths 1..2, plus 1e-3 of noise;
    - zero: Gaussian, one of them exactly zero;
    - spread: Gaussian directions, norms spread log-evenly from 1e-3 to 1e3;
    - dependent: rank T // 2 (at least 1), small integers, so exactly dependent in float32;
    - nearly_dependent: rank T // 2 plus 1e-6 of noise.
    """
    g = torch.Generator().manual_seed(seed)

    def gauss(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def lengths():
        return 1 + torch.rand(tasks, 1, generator=g, dtype=torch.float64)

    if family == "well":
        rows = gauss(tasks, size)
    elif family == "parallel":
        rows = gauss(1, size) * lengths() + 1e-3 * gauss(tasks, size)
    elif family == "opposite":
        signs = torch.tensor([(-1.0) ** t for t in range(tasks)], dtype=torch.float64)[:, None]
        rows = signs * gauss(1, size) * lengths() + 1e-3 * gauss(tasks, size)
    elif family == "zero":
        rows = gauss(tasks, size)
        rows[seed % tasks] = 0.0
    elif family == "spread":
        rows = gauss(tasks, size)
        norms = torch.logspace(-3, 3, tasks, dtype=torch.float64)[torch.randperm(tasks, generator=g)]
        rows = rows / rows.norm(dim=1, keepdim=True) * norms[:, None]
    elif family == "dependent":
        rank = max(1, tasks // 2)
        rows = (torch.randint(-3, 4, (tasks, rank), generator=g) @ torch.randint(-3, 4, (rank, size), generator=g)).double()
    elif family == "nearly_dependent":
        rank = max(1, tasks // 2)
        rows = gauss(tasks, rank) @ gauss(rank, size) + 1e-6 * gauss(tasks, size)
    else:
        raise ValueError(f"unknown case family {family!r}; one of {', '.join(FAMILIES)}")
    return rows.float()


def nearly_opposite(theta: float, lengths: tuple[float, float] = (1.0, 2.0)) -> Tensor:
    """Two gradients at the angle pi - theta: g_1 = |g_1| e_1, g_2 = |g_2| (-cos theta, sin theta)."""
    a, b = lengths
    return torch.tensor([[a, 0.0], [-b * math.cos(theta), b * math.sin(theta)]], dtype=torch.float64).float()
