"""Labels-only loss: trains a teacher or a baseline through the same module path."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DistillInputs, Loss


IGNORE_INDEX = -100  # the target of samples without a label, inside the loss functions


class CE(Loss):
    """Cross-entropy on hard labels (optionally label-smoothed); runs no teacher."""

    needs_teacher = False

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        ce = hard_label_ce(inputs.student_logits, inputs.target, inputs.labeled, self.label_smoothing)
        return {"loss": ce, "ce": ce}


def hard_label_ce(logits: Tensor, target: Tensor, labeled: Tensor | None = None, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy in fp32 over the samples that carry a label (all when ``labeled`` is None)."""
    logits = logits.float()
    if labeled is None:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    # A masked mean instead of boolean indexing: no data-dependent shape, so no device sync per step.
    # Unlabeled samples get the ignored class, which also drops them from the label-smoothing term.
    target = torch.where(labeled, target, IGNORE_INDEX)
    total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum",
                            label_smoothing=label_smoothing)
    return total / labeled.sum().clamp_min(1)
