"""FitNets hints (Romero et al., ICLR 2015) as a loss with trainable regressors."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor, nn

from .base import DistillInputs
from .feature_base import AdapterLoss, Shape, conv_bn, spatial_dims
from .functional.feature import fitnet_loss


class FitNet(AdapterLoss):
    """Hint loss ``Σ_pairs MSE(r(f_s), f_t)``: ``{"loss": weight · fitnet, "fitnet": fitnet}``.

    The regressor ``r`` is built from the observed shapes (:meth:`build`): for maps a
    ``kernel_size``×``kernel_size`` convolution (same padding) + BatchNorm + ReLU from the student's to
    the teacher's channels, for vectors a linear layer. If the spatial sizes differ, the larger of
    ``r(f_s)`` and ``f_t`` is adaptive-average-pooled to the smaller one. Default weight 100 (CIFAR
    tables), hint on the middle stage.

    One-stage FitNet: compose with KD. The original two-stage recipe (hint pre-training, then KD):
    ``Staged(FitNet(...), KD(...), switch_epoch=N)``, see :class:`~kd_lightning.losses.Staged`.
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 100.0,
                 kernel_size: int = 3):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        if kernel_size not in (1, 3):
            raise ValueError(f"FitNet kernel_size must be 1 or 3, got {kernel_size!r}")
        self.kernel_size = kernel_size

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        nd = spatial_dims(student_shape, "FitNet")
        if spatial_dims(teacher_shape, "FitNet") != nd:
            raise ValueError(f"FitNet cannot pair a student feature {student_shape} with a teacher feature "
                             f"{teacher_shape} of another rank")
        if nd == 0:
            return nn.Linear(student_shape[0], teacher_shape[0])
        return conv_bn(student_shape[0], teacher_shape[0], nd, self.kernel_size, relu=True)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        fitnet = sum(fitnet_loss(r(s.float()), t.float())
                     for r, (s, t) in zip(self.adapters, self.features(inputs)))
        return {"loss": self.weight * fitnet, "fitnet": fitnet}
