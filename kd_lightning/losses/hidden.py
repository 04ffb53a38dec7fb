"""Transformer layer distillation: hidden states (DistilBERT, TinyBERT) and attention maps (TinyBERT)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor, nn

from .base import CLASSIFIER, TOKEN, DistillInputs
from .feature_base import AdapterLoss, FeatureLoss, Shape
from .functional.feature import attention_map_loss, hidden_state_loss


class HiddenStates(AdapterLoss):
    """``weight · Σ_pairs d(P h_s, h_t)`` over tapped hidden states ``[B, T, H]`` of layer pairs.

    The pairs are the layer map (TinyBERT maps student layer ``i`` to teacher layer ``g(i)``, e.g. every
    other layer). ``P`` is a learned linear projection from the student's width to the teacher's, built
    from the observed shapes (``project="auto"``: only when the widths differ; ``True``: always, as in
    TinyBERT; ``False``: never). ``metric="mse"`` is TinyBERT's hidden-state loss, ``"cosine"``
    DistilBERT's cosine-embedding loss. Terms: ``loss``, ``hidden``.

    It reads tapped features only, so it serves both families: beside ``KD`` on a classifier, or beside
    ``TokenKD`` on a causal LM (``Compose([TokenKD(), HiddenStates(...)])``).
    """

    families = (CLASSIFIER, TOKEN)

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 1.0,
                 metric: str = "mse", project: bool | str = "auto"):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        if metric not in ("mse", "cosine"):
            raise ValueError(f"metric must be 'mse' or 'cosine', got {metric!r}")
        if project not in (True, False, "auto"):
            raise ValueError(f"project must be True, False or 'auto', got {project!r}")
        self.metric, self.project = metric, project

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        if len(student_shape) != 2 or len(teacher_shape) != 2 or student_shape[0] != teacher_shape[0]:
            raise ValueError(f"HiddenStates pairs hidden states [T, H] of equal length; got {student_shape} "
                             f"and {teacher_shape} (tap the layer outputs, e.g. 'bert.encoder.layer.3')")
        width_s, width_t = student_shape[-1], teacher_shape[-1]
        if self.project is True or (self.project == "auto" and width_s != width_t):
            return nn.Linear(width_s, width_t)
        if width_s != width_t:
            raise ValueError(f"hidden widths differ ({width_s} vs {width_t}) and project=False")
        return nn.Identity()

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        hidden = sum(hidden_state_loss(p(s.float()), t, self.metric)
                     for p, (s, t) in zip(self.adapters, self.features(inputs)))
        return {"loss": self.weight * hidden, "hidden": hidden}


class AttentionMaps(FeatureLoss):
    """``weight · Σ_pairs MSE(A_s, A_t)`` over attention maps ``[B, heads, T, T]`` (TinyBERT).

    Tap the attention probabilities with a Hugging Face model in eager attention, e.g.
    ``student_layers=["bert.encoder.layer.0.attention.self:1"]`` (the ``:1`` takes the module's second
    output). Teacher and student need the same number of heads. Terms: ``loss``, ``attention``. Like
    :class:`HiddenStates`, it serves both families.
    """

    families = (CLASSIFIER, TOKEN)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        attention = sum(attention_map_loss(s, t) for s, t in self.features(inputs))
        return {"loss": self.weight * attention, "attention": attention}
