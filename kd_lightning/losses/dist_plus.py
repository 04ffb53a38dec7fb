"""DIST+ (Huang et al., TPAMI 2025): DIST on the logits and its relational match on tapped features."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor, nn

from .base import DistillInputs, ce_term, require_teacher_logits, weighted_total
from .checks import check_temperature, check_weights
from .feature_base import AdapterLoss, Shape, pointwise, spatial_dims
from .functional.feature import match_spatial
from .functional.response import dist_plus_feature_terms, dist_terms


class DISTPlus(AdapterLoss):
    """``ce_weight · CE + kd_weight · (beta · inter + gamma · intra + Σ_pairs (iota · channel + kappa · spatial))``.

    The logit terms are DIST's (:func:`~kd_lightning.losses.functional.dist_terms`), the feature terms
    :func:`~kd_lightning.losses.functional.dist_plus_feature_terms` on each tapped pair. The channel relation
    compares channel vectors position by position, so a student narrower than its teacher goes through a
    trained 1×1 projection (built from the observed shapes; none when the widths agree); a larger map is
    pooled to the smaller. Defaults: DIST's CIFAR recipe (τ=4, β=γ=1, CE 1 + 2·distillation), feature
    weights 1.

    Terms: ``ce``, ``dist_plus`` (the bracket), ``inter``, ``intra``, ``channel``, ``spatial``.
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None,
                 temperature: float = 4.0, beta: float = 1.0, gamma: float = 1.0, iota: float = 1.0,
                 kappa: float = 1.0, ce_weight: float = 1.0, kd_weight: float = 2.0):
        # kd_weight weighs the whole bracket (logit and feature terms); the base's own weight is unused.
        super().__init__(pairs, student_layers, teacher_layers, weight=1.0)
        self.temperature = check_temperature(temperature)
        w = check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        self.ce_weight, self.kd_weight = w["ce_weight"], w["kd_weight"]
        t = check_weights(beta=beta, gamma=gamma, iota=iota, kappa=kappa)
        self.beta, self.gamma, self.iota, self.kappa = t["beta"], t["gamma"], t["iota"], t["kappa"]
        self.needs_target = self.ce_weight > 0

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        nd = spatial_dims(student_shape, "DISTPlus")
        if spatial_dims(teacher_shape, "DISTPlus") != nd:
            raise ValueError(f"DISTPlus cannot pair a student feature {student_shape} with a teacher feature "
                             f"{teacher_shape} of another rank")
        if student_shape[0] == teacher_shape[0]:
            return nn.Identity()
        return pointwise(student_shape[0], teacher_shape[0], nd)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        teacher = require_teacher_logits(inputs, "DISTPlus")
        ce = ce_term(inputs, self.ce_weight)
        inter, intra = dist_terms(inputs.student_logits, teacher, self.temperature)
        channel = spatial = 0.0
        for project, (s, t) in zip(self.adapters, self.features(inputs)):
            c, sp = dist_plus_feature_terms(*match_spatial(project(s.float()), t.float()))
            channel, spatial = channel + c, spatial + sp
        dist_plus = self.beta * inter + self.gamma * intra + self.iota * channel + self.kappa * spatial
        loss = weighted_total(inputs, (self.ce_weight, ce), (self.kd_weight, dist_plus))
        return {"loss": loss, "ce": ce, "dist_plus": dist_plus, "inter": inter, "intra": intra,
                "channel": channel, "spatial": spatial}

    def extra_repr(self) -> str:
        return (f"pairs={self.pairs}, temperature={self.temperature}, beta={self.beta}, gamma={self.gamma}, "
                f"iota={self.iota}, kappa={self.kappa}, ce_weight={self.ce_weight}, kd_weight={self.kd_weight}")
