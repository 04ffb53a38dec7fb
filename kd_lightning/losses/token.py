"""Token-level distillation loss for causal language models."""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Loss
from .checks import check_temperature, check_weights
from .functional.token import TOKEN_DIVERGENCES, token_divergence

IGNORE_INDEX = -100
KD_POSITIONS = ("all", "labels")


class TokenKD(Loss):
    """``ce_weight · CE + kd_weight · KD`` over the next-token positions of a causal LM.

    Position ``i`` of the logits predicts token ``i + 1``: ``logits[:, :-1]`` are scored against
    ``labels[:, 1:]``. With ``p = softmax(z_t/T)`` and ``q = softmax(z_s/T)``,

        CE = Σ_{labels ≠ -100} −log softmax(z_s)[label] / N
        KD = T² · Σ_{kd positions} d(p, q) / N        (d from :func:`~kd_lightning.losses.functional.token_divergence`)

    ``kd_positions="all"`` distills at every non-padding position (``attention_mask[:, 1:]``), as in
    word-level KD (Kim & Rush 2016) and GKD; ``"labels"`` only where the label is not -100 (e.g. the
    response of a prompt/response pair). ``N`` is each term's own count of positions, or ``num_tokens``
    when given — the count of the whole optimizer step (see :meth:`count_mask`), so that a mean over the
    step does not depend on how the step was split into micro-batches or ranks. With ``num_tokens`` both
    terms share that one divisor.

    Args:
        divergence: ``forward``, ``reverse``, ``jsd`` (uses ``beta``), ``skew_forward`` / ``skew_reverse``
            (use ``alpha``) or ``tvd``.
        kd_weight: 0 trains on the labels alone (no teacher needed).

    ``forward(student_logits [B,L,V], teacher_logits [B,L,V] | None, labels [B,L], attention_mask [B,L] | None,
    num_tokens=None)`` returns ``{"loss", "ce", "kd"}`` (``ce``/``kd`` unweighted; a term with weight 0 is
    not computed and reported as 0).
    """

    def __init__(self, divergence: str = "forward", temperature: float = 1.0, ce_weight: float = 0.0,
                 kd_weight: float = 1.0, beta: float = 0.5, alpha: float = 0.1, kd_positions: str = "all"):
        super().__init__()
        if divergence not in TOKEN_DIVERGENCES:
            raise ValueError(f"TokenKD: divergence={divergence!r} is not known; use one of {', '.join(TOKEN_DIVERGENCES)}")
        self.divergence = divergence
        self.temperature = check_temperature(temperature)
        w = check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        self.ce_weight, self.kd_weight = w["ce_weight"], w["kd_weight"]
        for name, value in (("beta", beta), ("alpha", alpha)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"TokenKD: {name}={value!r} is outside [0, 1]; pick a mixing weight such as 0.5 (beta) or 0.1 (alpha)")
        self.beta, self.alpha = float(beta), float(alpha)
        if kd_positions not in KD_POSITIONS:
            raise ValueError(f"TokenKD: kd_positions={kd_positions!r} is not known; use 'all' (every non-padding "
                             "position) or 'labels' (only positions whose label is not -100)")
        self.kd_positions = kd_positions
        self.needs_teacher = self.kd_weight > 0
        self.needs_target = self.ce_weight > 0

    # ---------------------------------------------------------------------------------- masks
    def masks(self, labels: Tensor, attention_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``(ce_mask, kd_mask)`` over the ``L − 1`` next-token positions, both ``[B, L−1]`` booleans."""
        if labels.ndim != 2:
            raise ValueError(f"TokenKD: labels must be [batch, length], got shape {tuple(labels.shape)}")
        target = labels[:, 1:]
        live = torch.ones_like(target, dtype=torch.bool) if attention_mask is None else attention_mask[:, 1:].bool()
        ce_mask = (target != IGNORE_INDEX) & live
        kd_mask = live if self.kd_positions == "all" else ce_mask
        return ce_mask, kd_mask

    def count_mask(self, labels: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """The positions whose number is the divisor ``N`` of the step: the KD positions when distilling,
        the labelled positions otherwise."""
        ce_mask, kd_mask = self.masks(labels, attention_mask)
        return kd_mask if self.kd_weight > 0 else ce_mask

    # -------------------------------------------------------------------------------- forward
    def forward(self, student_logits: Tensor, teacher_logits: Optional[Tensor], labels: Tensor,
                attention_mask: Optional[Tensor] = None,
                num_tokens: Optional[Union[int, float, Tensor]] = None) -> Dict[str, Tensor]:
        if student_logits.ndim != 3:
            raise ValueError(f"TokenKD: student logits must be [batch, length, vocab], got {tuple(student_logits.shape)}")
        if tuple(labels.shape) != tuple(student_logits.shape[:2]):
            raise ValueError(f"TokenKD: labels {tuple(labels.shape)} must match the logits' [batch, length] "
                             f"{tuple(student_logits.shape[:2])}")
        ce_mask, kd_mask = self.masks(labels, attention_mask)
        s = student_logits[:, :-1]
        zero = torch.zeros((), dtype=torch.float32, device=student_logits.device)
        ce, kd = zero, zero
        if self.ce_weight > 0:
            ce = masked_token_ce(s, labels[:, 1:], ce_mask, num_tokens)
        if self.kd_weight > 0:
            if teacher_logits is None:
                raise ValueError("TokenKD: kd_weight > 0 needs teacher logits, got None; pass a teacher to the "
                                 "module or set kd_weight=0 (with ce_weight > 0) for labels-only training")
            kd = token_divergence(s, teacher_logits[:, :-1], kd_mask, divergence=self.divergence,
                                  temperature=self.temperature, beta=self.beta, alpha=self.alpha,
                                  num_valid=num_tokens)
        loss = None
        for weight, term in ((self.ce_weight, ce), (self.kd_weight, kd)):
            if weight > 0:
                loss = weight * term if loss is None else loss + weight * term
        return {"loss": loss, "ce": ce, "kd": kd}

    def extra_repr(self) -> str:
        return (f"divergence={self.divergence!r}, temperature={self.temperature}, ce_weight={self.ce_weight}, "
                f"kd_weight={self.kd_weight}, beta={self.beta}, alpha={self.alpha}, kd_positions={self.kd_positions!r}")


def masked_token_ce(logits: Tensor, target: Tensor, mask: Tensor,
                    num_tokens: Optional[Union[int, float, Tensor]] = None) -> Tensor:
    """``Σ_{mask} −log softmax(logits)[target] / N`` in fp32 (N = mask count, or ``num_tokens``)."""
    vocab = logits.shape[-1]
    rows = mask.reshape(-1).nonzero().squeeze(-1)
    picked = logits.reshape(-1, vocab).index_select(0, rows)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    total = F.cross_entropy(picked.to(dtype), target.reshape(-1).index_select(0, rows), reduction="sum")
    denominator = num_tokens if num_tokens is not None else rows.numel()
    if isinstance(denominator, Tensor):
        return total / denominator.to(dtype).clamp_min(1)
    return total / max(float(denominator), 1.0)
