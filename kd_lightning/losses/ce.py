"""Labels-only loss: trains a teacher or a baseline through the same module path."""
from __future__ import annotations

from typing import Dict

from torch import Tensor

from .base import DistillInputs, Loss
from .checks import check_label_smoothing
from .functional.response import hard_label_ce


class CE(Loss):
    """Cross-entropy on hard labels (optionally label-smoothed); runs no teacher."""

    needs_teacher = False

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = check_label_smoothing(label_smoothing)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        ce = hard_label_ce(inputs.student_logits, inputs.target, inputs.labeled, self.label_smoothing)
        return {"loss": ce, "ce": ce}
