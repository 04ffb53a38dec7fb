"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) as a loss."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor

from .base import DistillInputs
from .feature_base import FeatureLoss
from .functional.relation import pkt_loss


class PKT(FeatureLoss):
    """PKT on embeddings (usually the classifier's input), summed over pairs: ``{"loss", "pkt"}``.

    Default weight 30000 (CIFAR tables). Student and teacher widths may differ.
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 30000.0,
                 eps: float = 1e-7):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        self.eps = float(eps)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        pkt = sum(pkt_loss(s, t, self.eps) for s, t in self.features(inputs))
        return {"loss": self.weight * pkt, "pkt": pkt}
