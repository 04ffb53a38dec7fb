"""Token-level distillation loss for causal language models."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .base import TOKEN, Loss, TokenInputs
from .checks import check_temperature, check_weights
from .functional.token import (TOKEN_DIVERGENCES, token_cross_entropy, token_cross_entropy_fused, token_divergence,
                               token_divergence_fused, token_divergence_topk)

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

    Both terms run chunked over the positions (``chunk_size`` rows of ``[·, V]`` in fp32 at a time, see
    :func:`~kd_lightning.losses.functional.token_divergence`); the logits are read in place (no shifted
    copy). **Fused student head:** pass ``student_logits=None`` and ``student_hidden [B,L,H]``,
    ``lm_head_weight [V,H]`` (and ``lm_head_bias``) instead: the student's logits are then computed chunk by
    chunk and never exist in full (:func:`~kd_lightning.losses.functional.token_divergence_fused`); with
    both terms on, each term makes its own pass over the output layer. **Teacher head fused too:** with the
    fused student head, pass ``teacher_logits=None`` and ``teacher_hidden [B,L,H_t]``,
    ``teacher_lm_head_weight [V,H_t]`` (and ``teacher_lm_head_bias``): the teacher's logits are then computed
    chunk by chunk as well, without a graph, so neither model's ``[B, L, V]`` logits exist.

    **Stored teacher signal:** pass ``teacher_logits=None`` and ``teacher_topk=(ids [B,L,k],
    logprobs [B,L,k], rest [B,L])`` (the batch keys of stored top-k teacher outputs): KD is
    then :func:`~kd_lightning.losses.functional.token_divergence_topk` — forward KL only — renormalised
    over the kept ids (``topk_tail=False``) or with the rest of the mass as one extra bucket
    (``topk_tail=True``).

    It is a token-family loss (:class:`~kd_lightning.losses.base.TokenInputs`): a classifier module refuses
    it, and it composes with feature losses of that family (``Compose([TokenKD(), HiddenStates(...)])``).
    """

    families = (TOKEN,)

    def __init__(self, divergence: str = "forward", temperature: float = 1.0, ce_weight: float = 0.0,
                 kd_weight: float = 1.0, beta: float = 0.5, alpha: float = 0.1, kd_positions: str = "all",
                 chunk_size: Optional[int] = None, topk_tail: bool = False):
        super().__init__()
        self.topk_tail = bool(topk_tail)
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"TokenKD: chunk_size={chunk_size!r} must be a positive number of rows (or None)")
        self.chunk_size = chunk_size
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
    def forward(self, inputs: Union[TokenInputs, Tensor, None], teacher_logits: Optional[Tensor] = None,
                labels: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                num_tokens: Optional[Union[int, float, Tensor]] = None, **fields: Any) -> Dict[str, Tensor]:
        """Terms of one batch: the module passes a :class:`~kd_lightning.losses.base.TokenInputs`; by hand,
        pass its fields (``student_logits, teacher_logits, labels, attention_mask, num_tokens``, and the
        keyword-only ``student_hidden``, ``lm_head_weight``, ``lm_head_bias``, ``teacher_topk``,
        ``teacher_hidden``, ``teacher_lm_head_weight``, ``teacher_lm_head_bias``)."""
        if not isinstance(inputs, TokenInputs):
            if labels is None:
                raise ValueError("TokenKD: labels [batch, length] are required")
            inputs = TokenInputs(student_logits=inputs, teacher_logits=teacher_logits, labels=labels,
                                 attention_mask=attention_mask, num_tokens=num_tokens, **fields)
        student_logits, teacher_logits, labels = inputs.student_logits, inputs.teacher_logits, inputs.labels
        attention_mask, num_tokens, teacher_topk = inputs.attention_mask, inputs.num_tokens, inputs.teacher_topk
        student_hidden, lm_head_weight, lm_head_bias = inputs.student_hidden, inputs.lm_head_weight, inputs.lm_head_bias
        fused = student_hidden is not None
        if fused:
            if student_logits is not None or lm_head_weight is None:
                raise ValueError("TokenKD: the fused head takes student_hidden [B,L,H] and lm_head_weight [V,H] "
                                 "with student_logits=None")
            lead = student_hidden.shape[:-1]
        else:
            if student_logits is None or student_logits.ndim != 3:
                got = None if student_logits is None else tuple(student_logits.shape)
                raise ValueError(f"TokenKD: student logits must be [batch, length, vocab], got {got}")
            lead = student_logits.shape[:-1]
        if len(lead) != 2 or tuple(labels.shape) != tuple(lead):
            raise ValueError(f"TokenKD: labels {tuple(labels.shape)} must match the student's [batch, length] "
                             f"{tuple(lead)}")
        ce_mask, kd_mask = self.masks(labels, attention_mask)
        # Position i predicts token i + 1: masks over all L positions (the last one never counts), so the
        # logits are read in place and their gradient needs no shifted copy.
        pad = torch.zeros_like(ce_mask[:, :1])
        ce_full, kd_full = torch.cat([ce_mask, pad], 1), torch.cat([kd_mask, pad], 1)
        device = student_hidden.device if fused else student_logits.device
        zero = torch.zeros((), dtype=torch.float32, device=device)
        ce, kd = zero, zero
        if self.ce_weight > 0:
            target = torch.cat([labels[:, 1:], torch.zeros_like(labels[:, :1])], 1)
            if fused:
                ce = token_cross_entropy_fused(student_hidden, lm_head_weight, target, ce_full, lm_head_bias=lm_head_bias,
                                               num_valid=num_tokens, chunk_size=self.chunk_size)
            else:
                ce = token_cross_entropy(student_logits, target, ce_full, num_valid=num_tokens,
                                         chunk_size=self.chunk_size)
        if self.kd_weight > 0:
            if teacher_topk is not None:
                return self.combine(ce, self.topk_kd(student_logits, teacher_topk, kd_full, num_tokens, fused))
            teacher_head = {}
            if inputs.teacher_hidden is not None:
                if not fused:
                    raise ValueError("TokenKD: teacher_hidden (the teacher's head fused) needs the fused student "
                                     "head too (student_hidden and lm_head_weight, student_logits=None)")
                teacher_head = dict(teacher_hidden=inputs.teacher_hidden,
                                    teacher_lm_head_weight=inputs.teacher_lm_head_weight,
                                    teacher_lm_head_bias=inputs.teacher_lm_head_bias)
            elif teacher_logits is None:
                raise ValueError("TokenKD: kd_weight > 0 needs teacher logits, got None; pass a teacher to the "
                                 "module or set kd_weight=0 (with ce_weight > 0) for labels-only training")
            kw = dict(divergence=self.divergence, temperature=self.temperature, beta=self.beta, alpha=self.alpha,
                      num_valid=num_tokens, chunk_size=self.chunk_size)
            if fused:
                kd = token_divergence_fused(student_hidden, lm_head_weight, teacher_logits, kd_full,
                                            lm_head_bias=lm_head_bias, **teacher_head, **kw)
            else:
                kd = token_divergence(student_logits, teacher_logits, kd_full, **kw)
        return self.combine(ce, kd)

    def combine(self, ce: Tensor, kd: Tensor) -> Dict[str, Tensor]:
        loss = None
        for weight, term in ((self.ce_weight, ce), (self.kd_weight, kd)):
            if weight > 0:
                loss = weight * term if loss is None else loss + weight * term
        return {"loss": loss, "ce": ce, "kd": kd}

    def topk_kd(self, student_logits: Optional[Tensor], teacher_topk: Tuple[Tensor, Tensor, Tensor], kd_full: Tensor,
                num_tokens: Optional[Union[int, float, Tensor]], fused: bool) -> Tensor:
        if self.divergence != "forward":
            raise ValueError(f"TokenKD: a stored top-k teacher signal supports divergence='forward' only, not "
                             f"{self.divergence!r}; distill online (no cache) for other divergences")
        if fused:
            raise ValueError("TokenKD: a stored top-k teacher signal needs the student's logits; use fused_head=False")
        ids, logprobs, rest = teacher_topk
        return token_divergence_topk(student_logits, ids, logprobs, kd_full, tail=self.topk_tail,
                                     temperature=self.temperature, teacher_rest=rest, num_valid=num_tokens,
                                     chunk_size=self.chunk_size)

    def extra_repr(self) -> str:
        return (f"divergence={self.divergence!r}, temperature={self.temperature}, ce_weight={self.ce_weight}, "
                f"kd_weight={self.kd_weight}, beta={self.beta}, alpha={self.alpha}, kd_positions={self.kd_positions!r}, "
                f"chunk_size={self.chunk_size}, topk_tail={self.topk_tail}")


def masked_token_ce(logits: Tensor, target: Tensor, mask: Tensor,
                    num_tokens: Optional[Union[int, float, Tensor]] = None,
                    chunk_size: Optional[int] = None) -> Tensor:
    """``Σ_{mask} −log softmax(logits)[target] / N`` in fp32 (N = mask count, or ``num_tokens``), chunked."""
    return token_cross_entropy(logits, target, mask, num_valid=num_tokens, chunk_size=chunk_size)
