"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017) as a loss."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor

from .base import DistillInputs
from .feature_base import FeatureLoss
from .functional.feature import at_loss


class AT(FeatureLoss):
    """Attention transfer summed over layer pairs: ``{"loss": weight · at, "at": at}``.

    ``at = Σ_pairs at_loss(f_s, f_t, p, mode)`` (see :func:`~kd_lightning.losses.functional.at_loss`);
    channel widths may differ, spatial mismatches are pooled. Default weight 1000 (CIFAR tables).
    Compose with :class:`~kd_lightning.losses.KD` for the CE/KD part.
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None,
                 weight: float = 1000.0, p: float = 2.0, mode: str = "code"):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        if mode not in ("code", "paper"):
            raise ValueError(f"AT mode must be 'code' (the authors' code) or 'paper', got {mode!r}")
        self.p = float(p)
        self.mode = mode

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        at = sum(at_loss(s, t, self.p, self.mode) for s, t in self.features(inputs))
        return {"loss": self.weight * at, "at": at}
