"""Learning-rate schedules: linear warmup, then cosine or linear decay to zero, or constant."""

from __future__ import annotations

import math
from typing import Literal

import torch

Schedule = Literal["cosine", "linear", "constant"]  # after a linear warmup


def lr_factor(step: int, total: int, warmup: int, kind: Schedule) -> float:
    """Multiplier of the base learning rate for optimiser step `step` (0-based) of `total`.

    Warmup ramps (step + 1) / warmup so that the first step already learns (a 0 learning rate would waste it)."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


def make_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float, kind: Schedule, start: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule positioned at optimiser step `start` (groups carry their base rate as `initial_lr`). A
    resumed run rebuilds it from its own config rather than loading the old one, so a run extended with a
    larger max_steps follows the new, longer schedule."""
    warmup = math.ceil(warmup_ratio * total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, kind), last_epoch=start - 1)
