"""Inter-channel correlation (Liu et al., ICCV 2021) as a loss with a trainable embedding."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor, nn

from .base import DistillInputs
from .feature_base import AdapterLoss, Shape, conv_bn, paired_dims
from .functional.correlation import ickd_loss


class ICKD(AdapterLoss):
    """``{"loss": weight · ickd, "ickd": Σ_pairs ickd_loss(embed(f_s), f_t)}``.

    The embedding (1×1 conv + BN, linear + BN for vectors, as in the authors' code) maps the student's feature
    to the teacher's channel count; :func:`~kd_lightning.losses.functional.ickd_loss` then compares the
    row-normalised C × C channel correlations, whatever the spatial sizes. Default: the deepest stage,
    weight 2.5 (the authors' CIFAR-100 command, CE 1 plus 2.5 × ICKD).
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 2.5):
        super().__init__(pairs, student_layers, teacher_layers, weight)

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        nd = paired_dims(student_shape, teacher_shape, "ICKD")
        return conv_bn(student_shape[0], teacher_shape[0], nd, kernel_size=1)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        ickd = sum(ickd_loss(embed(s.float()), t.float())
                   for embed, (s, t) in zip(self.adapters, self.features(inputs)))
        return {"loss": self.weight * ickd, "ickd": ickd}
