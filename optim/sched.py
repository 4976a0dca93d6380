"""Learning-rate schedules: linear warm-up, then linear decay to 0 (UC2), inverse square root, or constant.

The factor for optimizer step ``s`` (1-based, as in UNITER, so the first step does not waste a zero LR)::

    s < warmup:  s / warmup
    linear:      max(0, (total - s) / (total - warmup))
    invsqrt:     sqrt(warmup / s)
    constant:    1
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

KINDS = ("linear", "invsqrt", "constant")


def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str = "linear") -> float:
    """Multiplier of the peak LR at 1-based optimizer step ``step``."""
    if kind not in KINDS:
        raise ValueError(f"schedule: expected one of {KINDS}, got {kind!r}")
    if step < warmup_steps:
        return step / warmup_steps
    if kind == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    if kind == "invsqrt":
        return math.sqrt(max(warmup_steps, 1) / max(step, 1))
    return 1.0


class WarmupDecaySchedule(LRScheduler):
    """Per-group LR = initial group LR (which includes its ``lr_mult``) x :func:`lr_factor`.

    ``state_dict()`` holds only numbers, so it round-trips through ``torch.load(weights_only=True)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                 kind: str = "linear", last_epoch: int = -1) -> None:
        lr_factor(1, warmup_steps, total_steps, kind)  # validates kind before the base class calls get_lr
        self.warmup_steps, self.total_steps, self.kind = warmup_steps, total_steps, kind
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        # last_epoch counts completed steps; the next optimizer step is number last_epoch + 1
        factor = lr_factor(self.last_epoch + 1, self.warmup_steps, self.total_steps, self.kind)
        return [base * factor for base in self.base_lrs]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any) -> WarmupDecaySchedule:
    """Schedule from a :class:`training.run_config.TrainConfig` (warmup_steps, num_train_steps, decay)."""
    return WarmupDecaySchedule(optimizer, cfg.warmup_steps, cfg.num_train_steps, cfg.decay)
