"""Streamlined knowledge distillation (Jeong et al., CVPR 2026): an instance term and a direction term."""
from __future__ import annotations

import math
from typing import Dict

from torch import Tensor

from .base import DistillInputs, Loss, ce_term, require_teacher_logits, weighted_total
from .checks import check_temperature, check_weights
from .functional.response import skd_direction_loss, skd_instance_loss


class SKD(Loss):
    """``ce_weight · CE + instance_weight · instance + direction_weight · direction`` with
    :func:`~kd_lightning.losses.functional.skd_instance_loss` (KL at ``τ``, no ``τ²``) and
    :func:`~kd_lightning.losses.functional.skd_direction_loss` (Mahalanobis distance between the Gram
    matrices of the normalised logits, Tikhonov ``λ``). The paper's equations; ``τ = 4`` and ``λ = 0.1``
    are the authors' code values, and the paper gives the terms equal weight.

    Terms: ``ce``, ``skd_instance``, ``skd_direction`` (unweighted).
    """

    def __init__(self, temperature: float = 4.0, tikhonov: float = 0.1, ce_weight: float = 1.0,
                 instance_weight: float = 1.0, direction_weight: float = 1.0):
        super().__init__()
        self.temperature = check_temperature(temperature)
        if not isinstance(tikhonov, (int, float)) or not math.isfinite(tikhonov) or tikhonov <= 0:
            raise ValueError(f"SKD tikhonov must be a positive number, got {tikhonov!r}; the authors use 0.1")
        self.tikhonov = float(tikhonov)
        w = check_weights(ce_weight=ce_weight, instance_weight=instance_weight, direction_weight=direction_weight)
        self.ce_weight, self.instance_weight, self.direction_weight = (
            w["ce_weight"], w["instance_weight"], w["direction_weight"])
        self.needs_target = self.ce_weight > 0

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        teacher = require_teacher_logits(inputs, "SKD")
        ce = ce_term(inputs, self.ce_weight)
        instance = skd_instance_loss(inputs.student_logits, teacher, self.temperature)
        direction = skd_direction_loss(inputs.student_logits, teacher, self.tikhonov)
        loss = weighted_total(inputs, (self.ce_weight, ce), (self.instance_weight, instance),
                              (self.direction_weight, direction))
        return {"loss": loss, "ce": ce, "skd_instance": instance, "skd_direction": direction}

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, tikhonov={self.tikhonov}, ce_weight={self.ce_weight}, "
                f"instance_weight={self.instance_weight}, direction_weight={self.direction_weight}")
