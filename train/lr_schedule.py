"""Learning-rate schedules of the trainers: linear warm-up, then cosine (down to
``optim.min_lr_ratio``), step (x ``optim.step_gamma`` per milestone) or constant, as one
``LambdaLR`` with a multiplier per parameter group (the encoder groups warm up on their own,
train/optimizer.py). Schedule shapes follow nanoGPT / torchtitan."""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import OptimConfig, typed


def lr_multiplier(step: int, optim_cfg: Any, total_steps: int, warmup: int | None = None) -> float:
    """Multiplier on the peak lr after ``step`` optimizer steps (0-based); ``warmup``
    overrides ``optim.warmup_steps`` (the encoder's own warm-up)."""
    ocfg = typed(optim_cfg, OptimConfig)  # the schedule name is checked by the schema
    schedule = ocfg.schedule
    warmup = ocfg.warmup_steps if warmup is None else warmup
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        min_ratio = ocfg.min_lr_ratio
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        # milestones < 1 are fractions of the run, >= 1 absolute optimizer steps
        milestones = [m * total_steps if m < 1 else m for m in ocfg.step_milestones]
        return ocfg.step_gamma ** sum(step >= m for m in milestones)
    return 1.0  # constant


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any,
                       total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine (to ``min_lr_ratio`` x lr) or step (x ``step_gamma`` per milestone);
    encoder groups warm up over ``optim.encoder_warmup_steps`` (null: ``warmup_steps``).

    Stepped once per optimizer step (DeepSpeed calls ``scheduler.step()`` inside
    ``engine.step()`` at gradient-accumulation boundaries).
    """
    ocfg = typed(optim_cfg, OptimConfig)

    def schedule(warmup: int | None):
        return lambda s: lr_multiplier(s, ocfg, total_steps, warmup)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [schedule(g.get("warmup_steps")) for g in optimizer.param_groups])
