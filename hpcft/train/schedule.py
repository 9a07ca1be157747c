"""Learning-rate schedule: linear warmup, then cosine decay to `base_lr * decay_ratio` at the last step.

`lr_at` is a pure function (easy to test and plot); `make_scheduler` wraps it in a LambdaLR so the position is
saved and restored with the scheduler's state_dict.
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return int(math.ceil(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0


def lr_at(step: int, total_steps: int, base_lr: float, warmup_ratio: float = 0.0, decay_ratio: float = 0.1) -> float:
    """The learning rate used for optimizer step `step` (0-based) of `total_steps`.

    Warmup: steps 0..W-1 ramp linearly up to base_lr (step W-1 reaches base_lr), W = ceil(warmup_ratio * total).
    Then cosine from base_lr (first step after warmup) down to base_lr * decay_ratio (last step, total-1).
    Never below base_lr * decay_ratio; decay_ratio = 1 gives a constant lr after warmup.
    """
    floor = base_lr * decay_ratio
    w = warmup_steps(total_steps, warmup_ratio)
    if step < w:
        return base_lr * (step + 1) / w
    last = total_steps - 1
    span = last - w
    if span <= 0:
        return base_lr if step <= w else floor
    progress = min(max((step - w) / span, 0.0), 1.0)
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, total_steps: int, warmup_ratio: float, decay_ratio: float):
    """LambdaLR following `lr_at` (as a factor of each param group's initial lr)."""
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        return lr_at(min(step, max(total_steps - 1, 0)), total_steps, 1.0, warmup_ratio, decay_ratio)

    return LambdaLR(optimizer, factor)
