"""Hinton-style knowledge distillation loss."""
from __future__ import annotations

from typing import Dict

from torch import Tensor

from .base import DistillInputs, Loss, ce_term, require_teacher_logits, weighted_total
from .checks import check_label_smoothing, check_temperature, check_weights
from .functional.response import kd_ce_terms, kd_loss


# ------------------------------------------------------------------------------------------- KD
class KD(Loss):
    """``ce_weight · CE(z_s, y) + kd_weight · kd`` with ``kd`` from :func:`~kd_lightning.losses.functional.kd_loss`
    (Hinton et al. 2015). CIFAR convention: ``temperature=4, ce_weight=0.1, kd_weight=0.9``.

    ``divergence`` picks ``"forward"`` (KL(p_t‖p_s), the paper), ``"reverse"`` or ``"js"``;
    ``standardize=True`` adds logit standardization (Sun et al. 2024; their CIFAR setting is
    ``temperature=2, ce_weight=0.1, kd_weight=9``). Terms: ``loss``, ``ce``, ``kd`` (unweighted).
    ``"ce"`` is a zero when ``ce_weight == 0`` (not computed) or when the batch has no labels.
    """

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9,
                 divergence: str = "forward", standardize: bool = False, label_smoothing: float = 0.0):
        super().__init__()
        self.temperature = check_temperature(temperature)
        w = check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        self.ce_weight, self.kd_weight = w["ce_weight"], w["kd_weight"]
        if divergence not in ("forward", "reverse", "js"):
            raise ValueError(f"divergence must be 'forward', 'reverse' or 'js', got {divergence!r}")
        self.divergence = divergence
        self.standardize = bool(standardize)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.needs_target = self.ce_weight > 0
        # The common case in one autograd node (same values, fewer operations); the rest composes.
        self._fused = (divergence == "forward" and not self.standardize and self.label_smoothing == 0
                       and self.ce_weight > 0 and self.kd_weight > 0)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        teacher = require_teacher_logits(inputs, "KD")
        if self._fused and inputs.target is not None and not teacher.requires_grad:
            loss, ce, kd = kd_ce_terms(inputs.student_logits, teacher, inputs.target, inputs.labeled,
                                       self.temperature, self.ce_weight, self.kd_weight)
            return {"loss": loss, "ce": ce, "kd": kd}
        ce = ce_term(inputs, self.ce_weight, self.label_smoothing)
        kd = kd_loss(inputs.student_logits, teacher, self.temperature, self.divergence, self.standardize)
        loss = weighted_total(inputs, (self.ce_weight, ce), (self.kd_weight, kd))
        return {"loss": loss, "ce": ce, "kd": kd}

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, "
                f"divergence={self.divergence!r}, standardize={self.standardize}")
