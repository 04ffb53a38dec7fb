"""Knowledge review (Chen et al., CVPR 2021): attention-based fusion of the student's stages, deep to shallow."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DistillInputs
from .feature_base import AdapterLoss, Shape, conv_bn, paired_dims, pointwise
from .functional.hint import hcl_loss


class AttentionFusion(nn.Module):
    """ReviewKD's attention-based fusion (ABF) of one student stage.

    A 1×1 conv + BN takes the stage to ``mid_channels``; unless it is the deepest stage, the fused
    middle-width feature of the next deeper stage is resized (nearest) to this stage's size and the two are
    mixed by two sigmoid attention maps computed from their concatenation; a 3×3 conv + BN takes the result
    to the teacher's width. ``forward`` returns ``(output at the teacher's width, fused middle feature)``.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, nd: int, fuse: bool):
        super().__init__()
        self.reduce = conv_bn(in_channels, mid_channels, nd, kernel_size=1)
        # For vectors (nd == 0) the 1×1 conv is a linear map and there is nothing to resize.
        self.attention = nn.Sequential(pointwise(2 * mid_channels, 2, nd), nn.Sigmoid()) if fuse else None
        self.expand = conv_bn(mid_channels, out_channels, nd, kernel_size=3)

    def forward(self, x: Tensor, deeper: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            if deeper is None:
                raise ValueError("AttentionFusion of a shallower stage needs the deeper stage's fused feature")
            if x.ndim > 2 and deeper.shape[2:] != x.shape[2:]:
                deeper = F.interpolate(deeper, size=tuple(x.shape[2:]), mode="nearest")
            z = self.attention(torch.cat([x, deeper], dim=1))
            x = x * z[:, :1] + deeper * z[:, 1:2]
        return self.expand(x), x


class ReviewKD(AdapterLoss):
    """Knowledge review: ``{"loss": weight · warm-up · reviewkd, "reviewkd": reviewkd}``.

    Pairs are the stages, shallow to deep. The student's stages are fused from the deepest to the shallowest
    by :class:`AttentionFusion` modules (built from the observed shapes), so each stage's output carries the
    deeper stages' context; ``reviewkd = Σ_stages hcl_loss(fused_s, f_t, levels)``
    (:func:`~kd_lightning.losses.functional.hcl_loss`). The weight rises linearly over the first
    ``warmup_epochs`` epochs (``min(1, epoch / warmup_epochs)``, epochs counted from 1; 0 for none).
    Defaults: weight 1, middle width 64, 20 warm-up epochs (the paper's CIFAR settings). Compose with
    :class:`~kd_lightning.losses.KD` or CE for the label term.
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 1.0,
                 mid_channels: int = 64, levels: Sequence[int] = (4, 2, 1), warmup_epochs: float = 20.0):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        if int(mid_channels) < 1:
            raise ValueError(f"ReviewKD mid_channels must be a positive width, got {mid_channels!r}")
        if not levels or any(int(k) < 1 for k in levels):
            raise ValueError(f"ReviewKD levels must be positive pooled sizes such as (4, 2, 1), got {levels!r}")
        if warmup_epochs < 0:
            raise ValueError(f"ReviewKD warmup_epochs must be >= 0 (0: no warm-up), got {warmup_epochs!r}")
        self.mid_channels = int(mid_channels)
        self.levels = tuple(int(k) for k in levels)
        self.warmup_epochs = float(warmup_epochs)

    def make_adapters(self, shapes: List[Tuple[Shape, Shape]]) -> List[nn.Module]:
        deepest = len(shapes) - 1
        return [AttentionFusion(s[0], self.mid_channels, t[0], paired_dims(s, t, "ReviewKD"), fuse=i < deepest)
                for i, (s, t) in enumerate(shapes)]

    def warmup(self, epoch: float) -> float:
        """The weight's factor at (1-based) ``epoch``."""
        return 1.0 if self.warmup_epochs == 0 else min(1.0, float(epoch) / self.warmup_epochs)

    def fuse(self, student_features: Sequence[Tensor]) -> List[Tensor]:
        """The student's stage features after the review: deep to shallow, each fused with the deeper ones."""
        outputs: List[Tensor] = []
        deeper = None
        for fusion, s in zip(reversed(self.adapters), reversed(list(student_features))):
            out, deeper = fusion(s.float(), deeper)
            outputs.append(out)
        return outputs[::-1]

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        pairs = self.features(inputs)
        fused = self.fuse([s for s, _ in pairs])
        review = sum(hcl_loss(s, t.float(), self.levels) for s, (_, t) in zip(fused, pairs))
        return {"loss": self.weight * self.warmup(inputs.epoch) * review, "reviewkd": review}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, mid_channels={self.mid_channels}, levels={self.levels}, "
                f"warmup_epochs={self.warmup_epochs:g}")
