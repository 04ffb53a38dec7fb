"""Decoupled Knowledge Distillation loss (Zhao et al., CVPR 2022)."""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor

from .base import DistillInputs, Loss, ce_term, require_teacher_logits, weighted_total
from .functional.response import dkd_terms
from .checks import check_temperature, check_weights


class DKD(Loss):
    """``ce_weight · CE + min(epoch / warmup_epochs, 1) · (alpha · TCKD + beta · NCKD)``.

    ``inputs.epoch`` is the 1-based epoch in progress (mdistiller's convention), so with the published
    ``warmup_epochs=20`` the DKD term is scaled by 0.05 in epoch 1 and fully on from epoch 20;
    ``warmup_epochs=0`` disables the warm-up. Defaults follow the CIFAR recipe (T=4, α=1, β=8, CE 1.0).

    Terms: ``loss``; ``ce``; ``dkd`` = α·TCKD + β·NCKD before the warm-up factor; ``tckd``; ``nckd``.
    Samples without a label (``target is None`` or ``labeled`` False) use the teacher's top class as the
    "target" of the decomposition, and contribute no CE.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0,
                 ce_weight: float = 1.0, warmup_epochs: float = 20):
        super().__init__()
        self.temperature = check_temperature(temperature)
        w = check_weights(ce_weight=ce_weight, alpha=alpha, beta=beta)
        self.ce_weight, self.alpha, self.beta = w["ce_weight"], w["alpha"], w["beta"]
        if not isinstance(warmup_epochs, (int, float)) or not math.isfinite(warmup_epochs) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be a number >= 0 (0 disables the warm-up), got {warmup_epochs!r}")
        self.warmup_epochs = float(warmup_epochs)

    def warmup_factor(self, epoch: float) -> float:
        """``min(epoch / warmup_epochs, 1)``, or 1 when the warm-up is disabled."""
        if self.warmup_epochs == 0:
            return 1.0
        return min(max(float(epoch), 0.0) / self.warmup_epochs, 1.0)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        teacher = require_teacher_logits(inputs, "DKD")
        target = self._decomposition_target(inputs, teacher)
        ce = ce_term(inputs, self.ce_weight)
        tckd, nckd = dkd_terms(inputs.student_logits, teacher, target, self.temperature)
        dkd = self.alpha * tckd + self.beta * nckd
        loss = weighted_total(inputs, (self.ce_weight, ce), (self.warmup_factor(inputs.epoch), dkd))
        return {"loss": loss, "ce": ce, "dkd": dkd, "tckd": tckd, "nckd": nckd}

    @staticmethod
    def _decomposition_target(inputs: DistillInputs, teacher: Tensor) -> Tensor:
        guess = teacher.argmax(dim=-1)
        if inputs.target is None:
            return guess
        if inputs.labeled is None:
            return inputs.target
        return torch.where(inputs.labeled, inputs.target.long(), guess)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, "
                f"ce_weight={self.ce_weight}, warmup_epochs={self.warmup_epochs}")
