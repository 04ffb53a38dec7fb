"""Correlation congruence (Peng et al., ICCV 2019) as a loss."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor

from .base import DistillInputs
from .feature_base import FeatureLoss
from .functional.relation import cc_loss


class CC(FeatureLoss):
    """Correlation congruence on embeddings, summed over pairs: ``{"loss": weight · cc, "cc": cc}``.

    ``kernel="gaussian"`` (Taylor-expanded Gaussian RBF, γ=0.4, order 2, the paper's form) or
    ``"bilinear"``; see :func:`~kd_lightning.losses.functional.cc_loss`. Default weight 0.02 (the CIFAR
    tables' value, which RepDistiller used with a different CC variant; tune it for this form).
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 0.02,
                 kernel: str = "gaussian", gamma: float = 0.4, order: int = 2):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        if kernel not in ("gaussian", "bilinear"):
            raise ValueError(f"CC kernel must be 'gaussian' or 'bilinear', got {kernel!r}")
        self.kernel, self.gamma, self.order = kernel, float(gamma), int(order)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        cc = sum(cc_loss(s, t, self.kernel, self.gamma, self.order) for s, t in self.features(inputs))
        return {"loss": self.weight * cc, "cc": cc}
