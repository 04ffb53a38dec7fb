"""Hinton-style knowledge distillation loss (and the small helpers the logit losses share)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .base import DistillInputs, Loss, check_temperature, check_weights
from .ce import hard_label_ce
from .functional.response import kd_ce_terms, kd_loss


# ------------------------------------------------------------------ shared by the logit losses
def require_teacher_logits(inputs: DistillInputs, who: str) -> Tensor:
    if inputs.teacher_logits is None:
        raise ValueError(
            f"{who} needs teacher logits, but DistillInputs.teacher_logits is None; give the module a "
            "teacher (or a batch carrying teacher logits), or use CE() for labels-only training")
    return inputs.teacher_logits


def ce_term(inputs: DistillInputs, ce_weight: float, label_smoothing: float = 0.0) -> Tensor:
    """Hard-label CE for the logged ``"ce"`` term.

    Returns a zero fp32 scalar (no graph) when ``ce_weight == 0`` (CE is then not computed at all) or when
    the batch has no labels (``inputs.target is None``, e.g. an unlabeled transfer set).
    """
    if ce_weight == 0 or inputs.target is None:
        return torch.zeros((), dtype=torch.float32, device=inputs.student_logits.device)
    return hard_label_ce(inputs.student_logits, inputs.target, inputs.labeled, label_smoothing)


def weighted_total(inputs: DistillInputs, *weighted: Tuple[float, Tensor]) -> Tensor:
    """``Σ w · term`` over the pairs with ``w != 0`` (a zero weight never turns a NaN term into the loss).

    If nothing contributes, returns a zero that is still attached to the student's graph.
    """
    total: Optional[Tensor] = None
    for weight, term in weighted:
        if weight != 0:
            total = weight * term if total is None else total + weight * term
    if total is None:
        total = inputs.student_logits.float().sum() * 0.0
    return total


def check_label_smoothing(label_smoothing: float) -> float:
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    return float(label_smoothing)


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
