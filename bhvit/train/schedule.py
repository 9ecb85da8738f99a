"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_lr``, per optimizer step.

``lr(t) = base·(t+1)/W`` for ``t < W``; afterwards with ``p = (t − W)/(T − W)``:
``lr(t) = min + (base − min)·(1 + cos(π·p))/2``. ``W = 0`` is the authors' released recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WarmupCosine:
    """Multiplicative factor of the base lr at step t (a picklable callable for ``LambdaLR``)."""

    total_steps: int
    warmup_steps: int
    min_ratio: float

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return (t + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        p = min(1.0, (t - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    fn = WarmupCosine(total_steps, warmup_steps, min(1.0, min_lr / base_lr))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
