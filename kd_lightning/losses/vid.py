"""Variational information distillation (Ahn et al., CVPR 2019) as a loss."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from .base import DistillInputs
from .feature_base import AdapterLoss, Shape, pointwise, spatial_dims
from .functional.feature import vid_loss


class VIDHead(nn.Module):
    """Mean regressor (1×1 conv / linear, ReLU, twice, then a third) and per-channel variance parameter."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, nd: int,
                 init_var: float, eps: float):
        super().__init__()
        self.regressor = nn.Sequential(
            pointwise(in_channels, mid_channels, nd), nn.ReLU(),
            pointwise(mid_channels, mid_channels, nd), nn.ReLU(),
            pointwise(mid_channels, out_channels, nd),
        )
        # softplus(log_scale) + eps == init_var at the start
        start = math.log(math.expm1(init_var - eps))
        self.log_scale = nn.Parameter(torch.full((out_channels,), start))

    def forward(self, x: Tensor) -> Tensor:
        return self.regressor(x)


class VID(AdapterLoss):
    """Variational information distillation summed over pairs: ``{"loss": weight · vid, "vid": vid}``.

    Per pair a trainable mean regressor ``μ(f_s)`` (three 1×1 convolutions, or linear layers for
    vectors, with ``mid_channels`` hidden channels, default the teacher's) and a trainable per-channel
    variance (``softplus`` parametrised, initially ``init_var`` = 5); the loss is the Gaussian NLL of the
    teacher feature, :func:`~kd_lightning.losses.functional.vid_loss`. Default weight 1 (CIFAR tables).
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 1.0,
                 mid_channels: Optional[int] = None, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        if init_var <= eps:
            raise ValueError(f"VID init_var must exceed eps ({eps}), got {init_var}")
        self.mid_channels, self.init_var, self.eps = mid_channels, float(init_var), float(eps)

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        nd = spatial_dims(student_shape, "VID")
        if spatial_dims(teacher_shape, "VID") != nd:
            raise ValueError(f"VID cannot pair a student feature {student_shape} with a teacher feature "
                             f"{teacher_shape} of another rank")
        mid = self.mid_channels or teacher_shape[0]
        return VIDHead(student_shape[0], mid, teacher_shape[0], nd, self.init_var, self.eps)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        vid = sum(vid_loss(head(s.float()), t.float(), head.log_scale, self.eps)
                  for head, (s, t) in zip(self.adapters, self.features(inputs)))
        return {"loss": self.weight * vid, "vid": vid}
