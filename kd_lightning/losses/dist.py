"""DIST loss: correlation-based distillation (Huang et al., NeurIPS 2022)."""
from __future__ import annotations

from typing import Dict

from torch import Tensor

from .base import DistillInputs, Loss, ce_term, require_teacher_logits, weighted_total
from .functional.response import dist_terms
from .checks import check_temperature, check_weights


class DIST(Loss):
    """``ce_weight · CE + kd_weight · (beta · inter + gamma · intra)``; see
    :func:`~kd_lightning.losses.functional.dist_terms`. CIFAR recipe: τ=4, β=γ=1, CE 1 + 2·dist
    (the defaults); ImageNet uses ``temperature=1``.

    Terms: ``loss``, ``ce`` (zero when ``ce_weight == 0`` or without labels), ``dist`` (β·inter + γ·intra,
    before ``kd_weight``), ``inter``, ``intra``.
    """

    def __init__(self, temperature: float = 4.0, beta: float = 1.0, gamma: float = 1.0,
                 ce_weight: float = 1.0, kd_weight: float = 2.0):
        super().__init__()
        self.temperature = check_temperature(temperature)
        w = check_weights(ce_weight=ce_weight, kd_weight=kd_weight, beta=beta, gamma=gamma)
        self.ce_weight, self.kd_weight, self.beta, self.gamma = (
            w["ce_weight"], w["kd_weight"], w["beta"], w["gamma"])
        if self.ce_weight == 0 and (self.kd_weight == 0 or self.beta + self.gamma == 0):
            raise ValueError(
                "DIST with ce_weight=0 and a zero distillation part (kd_weight=0, or beta=gamma=0) trains "
                "nothing; set ce_weight > 0 or kd_weight > 0 with beta or gamma > 0")
        self.needs_target = self.ce_weight > 0

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        teacher = require_teacher_logits(inputs, "DIST")
        ce = ce_term(inputs, self.ce_weight)
        inter, intra = dist_terms(inputs.student_logits, teacher, self.temperature)
        dist = self.beta * inter + self.gamma * intra
        loss = weighted_total(inputs, (self.ce_weight, ce), (self.kd_weight, dist))
        return {"loss": loss, "ce": ce, "dist": dist, "inter": inter, "intra": intra}

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, beta={self.beta}, gamma={self.gamma}, "
                f"ce_weight={self.ce_weight}, kd_weight={self.kd_weight}")
