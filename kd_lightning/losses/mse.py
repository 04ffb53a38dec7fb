"""Logit regression loss (Ba & Caruana, 2014)."""
from __future__ import annotations

from typing import Dict

from torch import Tensor

from .base import DistillInputs, Loss, ce_term, require_teacher_logits, weighted_total
from .functional.response import logit_mse
from .checks import check_weights


class LogitMSE(Loss):
    """``ce_weight · CE + kd_weight · mean((z_s − z_t)²)``: match the teacher's raw logits.

    Uses no temperature (``self.temperature`` is None, so a teacher ensemble averages raw logits).
    Terms: ``loss``, ``ce`` (zero when ``ce_weight == 0`` or without labels), ``mse``.
    """

    def __init__(self, ce_weight: float = 0.0, kd_weight: float = 1.0):
        super().__init__()
        self.temperature = None
        w = check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        self.ce_weight, self.kd_weight = w["ce_weight"], w["kd_weight"]
        self.needs_target = self.ce_weight > 0

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        teacher = require_teacher_logits(inputs, "LogitMSE")
        ce = ce_term(inputs, self.ce_weight)
        mse = logit_mse(inputs.student_logits, teacher)
        loss = weighted_total(inputs, (self.ce_weight, ce), (self.kd_weight, mse))
        return {"loss": loss, "ce": ce, "mse": mse}

    def extra_repr(self) -> str:
        return f"ce_weight={self.ce_weight}, kd_weight={self.kd_weight}"
