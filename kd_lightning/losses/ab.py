"""Activation-boundary transfer (Heo et al., AAAI 2019) as a loss with trainable connectors."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor, nn

from .base import DistillInputs
from .feature_base import AdapterLoss, Shape, conv_bn, paired_dims, stage_decays
from .functional.hint import ab_loss


class AB(AdapterLoss):
    """``{"loss": weight · ab, "ab": ab}`` with ``ab = Σ_i decay_i · ab_loss(connector_i(f_s), f_t, margin)``.

    Each student feature goes through a connector (1×1 conv + BN, linear + BN for vectors) to the teacher's
    width; ``decay_i = 1 / 2^(n - i - 1)`` weighs the deepest pair 1 and each shallower one half the next, as
    the authors' code does (``stage_decay=False`` for 1). :func:`~kd_lightning.losses.functional.ab_loss`
    sums over neurons, so the default weight 0.003 is the authors' scale (3/1000, RepDistiller's β = 1). The
    paper uses the loss to initialise the student before training on labels;
    ``Staged(AB(...), KD(...), switch_epoch=N)`` does that, composing it with KD trains both at once.
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 0.003,
                 margin: float = 1.0, stage_decay: bool = True):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        if not margin >= 0:
            raise ValueError(f"AB margin must be >= 0 (the paper uses 1.0), got {margin!r}")
        self.margin = float(margin)
        self.stage_decay = bool(stage_decay)

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        nd = paired_dims(student_shape, teacher_shape, "AB")
        return conv_bn(student_shape[0], teacher_shape[0], nd, kernel_size=1)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        pairs = self.features(inputs)
        ab = sum(decay * ab_loss(connector(s.float()), t.float(), self.margin)
                 for decay, connector, (s, t) in zip(stage_decays(len(pairs), self.stage_decay), self.adapters, pairs))
        return {"loss": self.weight * ab, "ab": ab}
