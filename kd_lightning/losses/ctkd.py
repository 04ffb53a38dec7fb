"""CTKD (Li et al., AAAI 2023): KD whose temperature is learned adversarially on a curriculum."""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from .base import DistillInputs, Loss, ce_term, require_teacher_logits, weighted_total
from .checks import check_temperature, check_weights
from .functional.response import ctkd_kd_loss, ctkd_lambda, gradient_reversal

MODES = ("global", "instance")


class CTKD(Loss):
    """``ce_weight · CE + kd_weight · T² · KL(p_t^T ‖ p_s^T)`` with a learned temperature ``T``.

    ``T = t_min + t_range · sigmoid(GRL_λ(θ))``: ``θ`` is one parameter (``mode="global"``, the paper's
    default) or the output of a small MLP on the detached student and teacher logits, one ``T`` per sample
    (``mode="instance"``, needs ``num_classes``). The gradient reversal layer
    (:func:`~kd_lightning.losses.functional.gradient_reversal`) makes ``θ`` ascend the KD loss the student
    descends, so the task grows harder; its strength ``λ`` follows the cosine curriculum
    :func:`~kd_lightning.losses.functional.ctkd_lambda` from 0 to 1 over the first ``ramp_epochs`` epochs
    (read from ``DistillInputs.epoch``). ``t_min = 1``, ``t_range = 20`` are the authors' bounds;
    ``θ`` starts where ``T = init_temperature`` (4, the KD convention the method starts from).

    Terms: ``ce``, ``kd``, ``temperature`` (mean T of the batch), ``ctkd_lambda``.
    """

    def __init__(self, ce_weight: float = 0.1, kd_weight: float = 0.9, mode: str = "global",
                 num_classes: Optional[int] = None, ramp_epochs: float = 10.0, init_temperature: float = 4.0,
                 t_min: float = 1.0, t_range: float = 20.0, hidden: int = 128):
        super().__init__()
        w = check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        self.ce_weight, self.kd_weight = w["ce_weight"], w["kd_weight"]
        if mode not in MODES:
            raise ValueError(f"CTKD mode must be one of {MODES}, got {mode!r}")
        if not isinstance(ramp_epochs, (int, float)) or ramp_epochs < 0:
            raise ValueError(f"CTKD ramp_epochs must be >= 0, got {ramp_epochs!r}; the paper ramps over 10 epochs")
        check_temperature(t_min)
        check_temperature(t_range)
        if not t_min < check_temperature(init_temperature) < t_min + t_range:
            raise ValueError(f"CTKD init_temperature={init_temperature!r} must lie strictly inside "
                             f"(t_min, t_min + t_range) = ({t_min}, {t_min + t_range})")
        self.mode, self.ramp_epochs = mode, float(ramp_epochs)
        self.t_min, self.t_range = float(t_min), float(t_range)
        start = (init_temperature - t_min) / t_range
        start_logit = math.log(start / (1.0 - start))
        if mode == "global":
            self.theta = nn.Parameter(torch.tensor(start_logit))
            self.mlp = None
        else:
            if not isinstance(num_classes, int) or num_classes < 2:
                raise ValueError(f"CTKD(mode='instance') needs num_classes (an int >= 2) to size its MLP, "
                                 f"got {num_classes!r}; set distill.num_classes=${{data.num_classes}}")
            self.theta = None
            self.mlp = nn.Sequential(nn.Linear(2 * num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            # Start every sample at init_temperature, as the global mode does.
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.constant_(self.mlp[2].bias, start_logit)
        self.needs_target = self.ce_weight > 0

    def temperature_of(self, inputs: DistillInputs, teacher: Tensor, strength: float) -> Tensor:
        """The batch's temperature: a scalar (global) or ``[B]`` (instance), through the reversal layer."""
        if self.theta is not None:
            raw = self.theta
        else:
            raw = self.mlp(torch.cat([inputs.student_logits.detach().float(), teacher.detach().float()], 1))
            raw = raw.squeeze(1)
        return self.t_min + self.t_range * torch.sigmoid(gradient_reversal(raw, strength))

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        teacher = require_teacher_logits(inputs, "CTKD")
        strength = ctkd_lambda(inputs.epoch, self.ramp_epochs)
        temperature = self.temperature_of(inputs, teacher, strength)
        ce = ce_term(inputs, self.ce_weight)
        kd = ctkd_kd_loss(inputs.student_logits, teacher, temperature)
        loss = weighted_total(inputs, (self.ce_weight, ce), (self.kd_weight, kd))
        return {"loss": loss, "ce": ce, "kd": kd, "temperature": temperature.detach().mean(),
                "ctkd_lambda": torch.tensor(strength, device=kd.device)}

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, "
                f"ramp_epochs={self.ramp_epochs}, t_min={self.t_min}, t_range={self.t_range}")
