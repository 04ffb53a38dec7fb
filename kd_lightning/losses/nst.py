"""Neuron selectivity transfer (Huang & Wang, 2017) as a loss."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor

from .base import DistillInputs
from .feature_base import FeatureLoss
from .functional.feature import nst_loss


class NST(FeatureLoss):
    """Polynomial-kernel MMD between channel activation maps, summed over pairs: ``{"loss", "nst"}``.

    Default weight 50 (CIFAR tables), kernel ``(xᵀy + c)^degree`` with degree 2, c 0 (the authors').
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 50.0,
                 degree: int = 2, c: float = 0.0):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        self.degree = int(degree)
        self.c = float(c)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        nst = sum(nst_loss(s, t, self.degree, self.c) for s, t in self.features(inputs))
        return {"loss": self.weight * nst, "nst": nst}
