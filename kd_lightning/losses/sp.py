"""Similarity-preserving KD (Tung & Mori, ICCV 2019) as a loss."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor

from .base import DistillInputs
from .feature_base import FeatureLoss
from .functional.feature import sp_loss


class SP(FeatureLoss):
    """Similarity preservation summed over layer pairs: ``{"loss": weight · sp, "sp": sp}``.

    Default weight 3000 (CIFAR tables). Any widths and spatial sizes (only B×B similarities are compared).
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 3000.0):
        super().__init__(pairs, student_layers, teacher_layers, weight)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        sp = sum(sp_loss(s, t) for s, t in self.features(inputs))
        return {"loss": self.weight * sp, "sp": sp}
