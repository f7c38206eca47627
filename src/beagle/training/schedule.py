"""Learning-rate schedules: linear warm-up, then constant, cosine or linear decay.

The factor of the peak learning rate at scheduler step ``step`` (0 for the first optimizer step)::

    warm-up   (step + 1 ≤ warmup):  (step + 1) / warmup
    after it, with p = (step + 1 - warmup) / (total_steps - warmup) clipped to [0, 1]:
        constant:  1
        cosine:    r + (1 - r) · (1 + cos(π p)) / 2
        linear:    r + (1 - r) · (1 - p)                    r = min_ratio

so the last planned step (step = total_steps - 1) runs at ``min_ratio`` of the peak. ``total_steps`` is
fixed when a run starts and saved with it, so a run stopped (``--max-steps``) and resumed follows one curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from beagle.training.config import LR_SCHEDULES


@dataclass(frozen=True)
class LRSchedule:
    kind: str = "constant"  # one of LR_SCHEDULES
    warmup: int = 0
    total_steps: int = 0
    min_ratio: float = 0.0

    def __post_init__(self):
        if self.kind not in LR_SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.kind!r}; choose one of {LR_SCHEDULES}")

    def factor(self, step: int) -> float:
        """The multiplier of the peak learning rate at 0-based scheduler step ``step``."""
        warmup = max(0, self.warmup)
        if warmup and step + 1 < warmup:
            return (step + 1) / warmup
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - warmup)
        progress = min(1.0, max(0.0, (step + 1 - warmup) / span))
        if self.kind == "cosine":
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * (1.0 - progress)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        # A plain function, not this object: LambdaLR would pickle a callable object's attributes into its state.
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.factor(step))
