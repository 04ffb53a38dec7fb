"""Flow of solution procedure (Yim et al., CVPR 2017) as a loss over consecutive tapped layers."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor, nn

from .base import DistillInputs
from .feature_base import AdapterLoss, Shape, paired_dims, pointwise
from .functional.correlation import fsp_loss


class FSP(AdapterLoss):
    """``{"loss": weight · fsp, "fsp": fsp}``, ``fsp = Σ_i fsp_loss(f_s,i, f_s,i+1, f_t,i, f_t,i+1, mode)``.

    The tapped layers are read in order and each consecutive two form one FSP matrix (with stage outputs as
    taps, the input and output of every stage after the first, as in the paper). FSP compares ``C1 × C2``
    matrices, so where a student layer is narrower or wider than the teacher's a 1×1 convolution (linear for
    vectors) maps it to the teacher's width first; on pairs of equal widths (resnet32x4 → resnet8x4) there
    is none and the loss is the paper's. Default weight 50 with ``mode="code"`` (RepDistiller's CIFAR
    setting). The paper trains with FSP first and then on the task; ``Staged(FSP(...), KD(...),
    switch_epoch=N)`` does that, composing it with KD trains both at once.
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 50.0, mode: str = "code"):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        if len(self.pairs) < 2:
            raise ValueError(f"FSP needs at least two tapped layers per model (consecutive ones form a matrix), "
                             f"got {self.pairs}; tap e.g. the stage outputs")
        if mode not in ("code", "paper"):
            raise ValueError(f"FSP mode must be 'code' (RepDistiller) or 'paper', got {mode!r}")
        self.mode = mode

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        nd = paired_dims(student_shape, teacher_shape, "FSP")
        if student_shape[0] == teacher_shape[0]:
            return nn.Identity()
        return pointwise(student_shape[0], teacher_shape[0], nd, bias=False)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        pairs = self.features(inputs)
        s = [connector(f.float()) for connector, (f, _) in zip(self.adapters, pairs)]
        t = [f.float() for _, f in pairs]
        fsp = sum(fsp_loss(s[i], s[i + 1], t[i], t[i + 1], self.mode) for i in range(len(pairs) - 1))
        return {"loss": self.weight * fsp, "fsp": fsp}
