"""KDSVD (Lee, Kim & Song, ECCV 2018): relations of SVD-compressed features between consecutive stages."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor

from .base import DistillInputs
from .feature_base import FeatureLoss
from .functional.svd import KDSVD_VIEWS, kdsvd_loss


class KDSVD(FeatureLoss):
    """``{"loss": weight · kdsvd, "kdsvd": kdsvd}`` over the tapped stages, shallow to deep (at least two);
    see :func:`~kd_lightning.losses.functional.kdsvd_loss`. No trainable adapters. ``over="positions"``
    (default) lets student and teacher widths differ; ``"channels"`` is the paper's reading (equal widths).
    Defaults ``k = 1``, weight 1 (mdistiller's CIFAR setting, CE 1 beside it).
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 1.0, k: int = 1,
                 over: str = "positions"):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        if len(self.pairs) < 2:
            raise ValueError(f"KDSVD relates consecutive stages and needs at least two layer pairs, got {self.pairs}; "
                             "tap the stages (student.taps.stages)")
        if over not in KDSVD_VIEWS:
            raise ValueError(f"KDSVD over must be one of {KDSVD_VIEWS}, got {over!r}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"KDSVD k must be an integer >= 1, got {k!r}")
        self.k, self.over = k, over

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        feats = self.features(inputs)
        kdsvd = kdsvd_loss([s for s, _ in feats], [t for _, t in feats], self.k, self.over)
        return {"loss": self.weight * kdsvd, "kdsvd": kdsvd}

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, weight={self.weight}, k={self.k}, over={self.over!r}"
