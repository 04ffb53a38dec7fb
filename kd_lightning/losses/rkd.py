"""Relational knowledge distillation (Park et al., CVPR 2019) as a loss."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor

from .base import DistillInputs
from .checks import check_weights
from .feature_base import FeatureLoss
from .functional.relation import rkd_terms


class RKD(FeatureLoss):
    """RKD on embeddings: ``rkd = Σ_pairs distance_weight · distance + angle_weight · angle``.

    Returns ``{"loss": weight · rkd, "rkd": rkd, "rkd_distance": Σ distance, "rkd_angle": Σ angle}``
    (the parts unweighted). Defaults: distance 25, angle 50, weight 1 (CIFAR tables).
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 1.0,
                 distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        w = check_weights(distance_weight=distance_weight, angle_weight=angle_weight)
        self.distance_weight, self.angle_weight = w["distance_weight"], w["angle_weight"]

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        distance = angle = 0.0
        for s, t in self.features(inputs):
            d, a = rkd_terms(s, t)
            distance, angle = distance + d, angle + a
        rkd = self.distance_weight * distance + self.angle_weight * angle
        return {"loss": self.weight * rkd, "rkd": rkd, "rkd_distance": distance, "rkd_angle": angle}
