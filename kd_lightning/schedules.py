"""Learning-rate schedules sized to the whole fit (the "patient" half of Beyer et al. 2022).

A scheduler factory whose ``total_steps`` is left unset (None) gets the Trainer's
``estimated_stepping_batches`` from :meth:`DistillationModule.configure_optimizers`, so one config
serves stages of different lengths (teacher, baseline and a student with a transfer set). Step these
every optimizer step (``optim.scheduler_interval: step``). ``torch.optim.lr_scheduler.OneCycleLR``
takes ``total_steps`` too, and is filled the same way.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: Optional[int] = None, warmup: float = 0.0,
                  final_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup over the first ``warmup`` fraction of ``total_steps``, then a cosine from the base
    lr down to ``final_lr_ratio * lr``, reached exactly at ``total_steps`` (and held after it)."""
    if total_steps is None or int(total_steps) < 1:
        raise ValueError(f"warmup_cosine needs total_steps >= 1 (kd-train fills it from the Trainer), got {total_steps!r}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {warmup!r}")
    total = int(total_steps)
    warm = int(round(warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return LambdaLR(optimizer, factor)
