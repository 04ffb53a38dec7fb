"""A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019) as a loss."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from .base import DistillInputs
from .feature_base import AdapterLoss, Shape, conv_bn, paired_dims, stage_decays
from .functional.feature import ofd_loss, ofd_margin_from_samples


class OFDConnector(nn.Module):
    """Student connector (1×1 conv + BN, or linear + BN for vectors) and the teacher's margin statistics."""

    def __init__(self, in_channels: int, out_channels: int, nd: int):
        super().__init__()
        self.connector = conv_bn(in_channels, out_channels, nd, kernel_size=1)
        for m in self.connector.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.register_buffer("neg_sum", torch.zeros(out_channels))
        self.register_buffer("neg_count", torch.zeros(out_channels))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    @property
    def margin(self) -> Tensor:
        """Per-channel ``E[t | t < 0]`` estimated so far (0 for channels without negative values)."""
        return torch.where(self.neg_count > 0, self.neg_sum / self.neg_count.clamp_min(1), torch.zeros_like(self.neg_sum))

    @torch.no_grad()
    def observe(self, teacher_feature: Tensor) -> None:
        total, count = ofd_margin_from_samples(teacher_feature)
        self.neg_sum += total.to(self.neg_sum)
        self.neg_count += count.to(self.neg_count)
        self.batches += 1

    def forward(self, x: Tensor) -> Tensor:
        return self.connector(x)


class OFD(AdapterLoss):
    """Margin-ReLU teacher transform + partial L2 (:func:`~kd_lightning.losses.functional.ofd_loss`).

    Returns ``{"loss": weight · ofd, "ofd": ofd}`` with ``ofd = Σ_i decay_i · ofd_loss_i`` over the pairs,
    ``decay_i = 1 / 2^(n - i - 1)`` (the authors' down-weighting of earlier stages; ``stage_decay=False``
    for 1). Tap *pre-ReLU* features where the model exposes them (e.g. a block's last BatchNorm), as the
    paper does; on post-ReLU features the margin is 0 and the loss is a plain L2 where either side is
    positive.

    The margin ``m = E[t | t < 0]`` per teacher channel is estimated from the teacher's own features:
    from the dry-run batch, then accumulated over the first ``margin_batches`` training batches (the
    paper derives it from the BatchNorm parameters under a Gaussian assumption, which needs access to
    the layer, see :func:`~kd_lightning.losses.functional.ofd_margin_from_bn`). Default weight 1e-3
    (the authors' α = 1/1000 on CIFAR; 1e-4 on ImageNet).
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 1e-3,
                 stage_decay: bool = True, margin_batches: int = 100):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        self.stage_decay = bool(stage_decay)
        self.margin_batches = int(margin_batches)

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        nd = paired_dims(student_shape, teacher_shape, "OFD")
        return OFDConnector(student_shape[0], teacher_shape[0], nd)

    def on_built(self, inputs: Optional[DistillInputs]) -> None:
        if inputs is not None:
            for connector, (_, t) in zip(self.adapters, self.features(inputs)):
                connector.observe(t)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        pairs = self.features(inputs)
        ofd = 0.0
        for decay, connector, (s, t) in zip(stage_decays(len(pairs), self.stage_decay), self.adapters, pairs):
            t = t.float().detach()
            if self.training and int(connector.batches) < self.margin_batches:
                connector.observe(t)
            ofd = ofd + decay * ofd_loss(connector(s.float()), t, connector.margin)
        return {"loss": self.weight * ofd, "ofd": ofd}
