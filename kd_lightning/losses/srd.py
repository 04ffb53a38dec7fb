"""SRD (Miles & Mikolajczyk, AAAI 2024): feature distillation through a linear projector and batch norm."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor, nn

from .base import DistillInputs
from .feature_base import AdapterLoss, Shape
from .functional.feature import srd_loss


class SRDHead(nn.Module):
    """The student's projector (``Linear`` into the teacher's width + ``BatchNorm1d``) and the teacher's
    parameter-free batch norm; maps are average-pooled over their positions first."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(student_dim, teacher_dim), nn.BatchNorm1d(teacher_dim))
        self.teacher_norm = nn.BatchNorm1d(teacher_dim, affine=False)

    @staticmethod
    def pooled(x: Tensor) -> Tensor:
        return x.float().flatten(2).mean(dim=2) if x.ndim > 2 else x.float()

    def forward(self, student: Tensor, teacher: Tensor):
        return self.project(self.pooled(student)), self.teacher_norm(self.pooled(teacher))


class SRD(AdapterLoss):
    """``{"loss": weight · srd, "srd": srd}``, ``srd = Σ_pairs log Σ |p(f_s) − n(f_t)|^exponent``
    (:func:`~kd_lightning.losses.functional.srd_loss`), on the embeddings (the classifier head's input).

    The paper's point is the projector: a linear map plus batch norm on the student side (:class:`SRDHead`,
    built from the observed widths, trained with the student and dropped after training) and batch norm
    without parameters on the teacher side. The logits stay the student's own (no teacher head is reused);
    the KL term of the recipe is the composed :class:`~kd_lightning.losses.KD` at ``T = 1``. Defaults from
    the authors' ImageNet recipe: weight 2, exponent 4.
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 2.0,
                 exponent: float = 4.0):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        if not isinstance(exponent, (int, float)) or exponent <= 0:
            raise ValueError(f"SRD exponent must be a positive number, got {exponent!r}; the authors use 4")
        self.exponent = float(exponent)

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        return SRDHead(student_shape[0], teacher_shape[0])

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        srd = sum(srd_loss(*head(s, t), exponent=self.exponent)
                  for head, (s, t) in zip(self.adapters, self.features(inputs)))
        return {"loss": self.weight * srd, "srd": srd}

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, weight={self.weight}, exponent={self.exponent}"
