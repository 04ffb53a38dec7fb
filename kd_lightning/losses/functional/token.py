"""Token-level divergences for language-model distillation, as pure tensor functions.

Notation (``REFERENCE.md``, "Language models"): ``z_s``, ``z_t`` are student / teacher logits
``[..., V]`` at next-token positions, ``p = softmax(z_t / T)`` (teacher), ``q = softmax(z_s / T)``
(student), ``KL(a‖b) = Σ_v a_v (log a_v − log b_v)``. A mask ``[...]`` marks the positions that count;
every divergence ``d`` is reduced as

    T² · Σ_{counted positions} d(p, q) / N

with ``N`` the number of counted positions, or ``num_valid`` when the caller knows a larger total (the
tokens of a whole optimizer step across micro-batches and ranks).

Everything runs in log space and in at least fp32 (bf16 / fp16 inputs are upcast, float64 stays float64
for ``gradcheck``). Vocabulary entries with a ``-inf`` logit have probability 0 and contribute
``0 · log 0 = 0``, never NaN. Only the counted rows are gathered before the ``[rows, V]`` upcast.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_temperature

__all__ = ["token_divergence", "token_divergence_topk", "TOKEN_DIVERGENCES"]

TOKEN_DIVERGENCES = ("forward", "reverse", "jsd", "skew_forward", "skew_reverse", "tvd")

# Stand-in for log 0 inside mixtures: finite, so that logaddexp and its gradient stay defined where both
# distributions are zero (those entries are then weighted by a zero probability and dropped).
_LOG_ZERO = -1e30


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _xlogx_ratio(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``Σ_v a_v (log a_v − log b_v)`` over the last axis, with ``0 · (anything)`` taken as 0."""
    present = log_a > float("-inf")
    diff = torch.where(present, log_a - torch.where(present, log_b, torch.zeros_like(log_b)),
                       torch.zeros_like(log_a))
    return (log_a.exp() * diff).sum(-1)


def _log_mixture(weight: float, log_a: Tensor, log_b: Tensor) -> Tensor:
    """``log(weight · a + (1 − weight) · b)`` computed from log-probabilities."""
    if weight == 0.0:
        return log_b
    if weight == 1.0:
        return log_a
    safe_a = torch.clamp(log_a, min=_LOG_ZERO)
    safe_b = torch.clamp(log_b, min=_LOG_ZERO)
    return torch.logaddexp(safe_a + math.log(weight), safe_b + math.log1p(-weight))


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _counted_rows(mask: Optional[Tensor], lead_shape: torch.Size, device: torch.device, name: str) -> Optional[Tensor]:
    """Flat indices of the counted positions (None: all of them)."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(lead_shape):
        raise ValueError(f"{name}: mask shape {tuple(mask.shape)} must equal the logits' leading shape "
                         f"{tuple(lead_shape)} (one entry per position)")
    return mask.reshape(-1).to(device=device, dtype=torch.bool).nonzero().squeeze(-1)


def _reduce(per_position: Tensor, count: int, num_valid: Optional[Union[int, float, Tensor]],
            temperature: float) -> Tensor:
    denominator = num_valid if num_valid is not None else count
    if isinstance(denominator, Tensor):
        denominator = denominator.to(per_position.dtype).clamp_min(1)
    else:
        if denominator < 0:
            raise ValueError(f"num_valid must be >= 0, got {denominator!r}")
        denominator = max(float(denominator), 1.0)
    # Nothing counted: the sum over no positions is 0 (with a zero gradient), never 0/0.
    return (temperature ** 2) * per_position.sum() / denominator


def token_divergence(student_logits: Tensor, teacher_logits: Tensor, mask: Optional[Tensor] = None, *,
                     divergence: str = "forward", temperature: float = 1.0, beta: float = 0.5,
                     alpha: float = 0.1, num_valid: Optional[Union[int, float, Tensor]] = None) -> Tensor:
    """Mean per-token divergence between teacher and student next-token distributions.

    ``T² · Σ_counted d(p, q) / N`` with ``p = softmax(z_t/T)``, ``q = softmax(z_s/T)`` and ``d`` one of:

    - ``"forward"``: ``KL(p‖q)`` (Hinton et al. 2015 at the token level; the word-level KD of
      Kim & Rush 2016).
    - ``"reverse"``: ``KL(q‖p)`` (mode seeking; MiniLLM, Gu et al., ICLR 2024).
    - ``"jsd"``: generalized JSD of GKD (Agarwal et al., ICLR 2024): ``m = βp + (1−β)q``,
      ``β·KL(p‖m) + (1−β)·KL(q‖m)``; as in TRL's ``generalized_jsd_loss`` the endpoints are defined as
      ``β = 0`` → ``KL(p‖q)`` and ``β = 1`` → ``KL(q‖p)``.
    - ``"skew_forward"``: ``KL(p ‖ αp + (1−α)q)``; ``"skew_reverse"``: ``KL(q ‖ (1−α)p + αq)``
      (DistiLLM, Ko et al., ICML 2024); ``α = 0`` gives the plain KLs.
    - ``"tvd"``: ``½ Σ_v |p_v − q_v|`` (total variation distance).

    Args:
        student_logits, teacher_logits: ``[..., V]`` logits of the same shape (any float dtype).
        mask: ``[...]`` booleans, True where the position counts (None: every position).
        num_valid: the divisor ``N``; default the number of counted positions here. A module passes the
            token count of its whole optimizer step so the result does not depend on micro-batching.

    Returns a scalar in fp32 (float64 for float64 inputs); 0 with a zero gradient when nothing counts.
    """
    name = "token_divergence"
    if divergence not in TOKEN_DIVERGENCES:
        raise ValueError(f"{name}: divergence must be one of {', '.join(TOKEN_DIVERGENCES)}, got {divergence!r}")
    temperature = check_temperature(temperature)
    beta = _check_fraction("beta", beta)
    alpha = _check_fraction("alpha", alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"{name}: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (same vocabulary)")
    if student_logits.ndim < 1:
        raise ValueError(f"{name}: logits need a vocabulary axis, got a scalar")
    vocab = student_logits.shape[-1]
    rows = _counted_rows(mask, student_logits.shape[:-1], student_logits.device, name)
    s = student_logits.reshape(-1, vocab)
    t = teacher_logits.reshape(-1, vocab)
    if rows is not None:
        s, t = s.index_select(0, rows), t.index_select(0, rows)
    dtype = _float_dtype(student_logits, teacher_logits)
    log_q = F.log_softmax(s.to(dtype) / temperature, dim=-1)
    log_p = F.log_softmax(t.to(dtype) / temperature, dim=-1)

    if divergence == "forward" or (divergence == "jsd" and beta == 0.0) or (divergence == "skew_forward" and alpha == 0.0):
        d = _xlogx_ratio(log_p, log_q)
    elif divergence == "reverse" or (divergence == "jsd" and beta == 1.0) or (divergence == "skew_reverse" and alpha == 0.0):
        d = _xlogx_ratio(log_q, log_p)
    elif divergence == "jsd":
        log_m = _log_mixture(beta, log_p, log_q)
        d = beta * _xlogx_ratio(log_p, log_m) + (1.0 - beta) * _xlogx_ratio(log_q, log_m)
    elif divergence == "skew_forward":
        d = _xlogx_ratio(log_p, _log_mixture(alpha, log_p, log_q))
    elif divergence == "skew_reverse":
        d = _xlogx_ratio(log_q, _log_mixture(1.0 - alpha, log_p, log_q))
    else:  # tvd
        d = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    return _reduce(d, d.shape[0], num_valid, temperature)


def token_divergence_topk(student_logits: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor,
                          mask: Optional[Tensor] = None, *, tail: bool = False, temperature: float = 1.0,
                          num_valid: Optional[Union[int, float, Tensor]] = None) -> Tensor:
    """Forward KL against a stored top-k teacher signal (DistillKit-style offline logits).

    ``teacher_ids`` ``[..., k]`` are the kept vocabulary ids ``S`` and ``teacher_logprobs`` ``[..., k]``
    the teacher's log-probabilities ``log p_i`` at temperature ``T`` (``log_softmax(z_t/T)`` gathered at
    ``S``); ``log q`` is the student's full-vocabulary ``log_softmax(z_s/T)`` gathered at ``S``.

    - ``tail=False`` (renormalised): ``p̃_i = p_i / Σ_S p_j`` and ``d = Σ_S p̃_i (log p̃_i − log q_i)``.
    - ``tail=True`` (a (k+1)-way KL with the leftover mass as one bucket, teacher not renormalised):
      ``d = Σ_S p_i (log p_i − log q_i) + r_t (log r_t − log r_s)``, ``r_t = 1 − Σ_S p_i``,
      ``r_s = 1 − Σ_S q_i``.

    Reduced like :func:`token_divergence` (``T² · Σ_counted d / N``). Both variants equal the dense forward
    KL when ``k = V``.
    """
    name = "token_divergence_topk"
    temperature = check_temperature(temperature)
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError(f"{name}: teacher_ids {tuple(teacher_ids.shape)} and teacher_logprobs "
                         f"{tuple(teacher_logprobs.shape)} must have the same shape [..., k]")
    if teacher_ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"{name}: teacher top-k {tuple(teacher_ids.shape)} and student logits "
                         f"{tuple(student_logits.shape)} must share their leading shape")
    vocab, k = student_logits.shape[-1], teacher_ids.shape[-1]
    if k > vocab:
        raise ValueError(f"{name}: k = {k} kept ids exceed the student's vocabulary of {vocab}")
    rows = _counted_rows(mask, student_logits.shape[:-1], student_logits.device, name)
    s = student_logits.reshape(-1, vocab)
    ids = teacher_ids.reshape(-1, k).long()
    lp = teacher_logprobs.reshape(-1, k)
    if rows is not None:
        s, ids, lp = s.index_select(0, rows), ids.index_select(0, rows), lp.index_select(0, rows)
    dtype = _float_dtype(student_logits, teacher_logprobs)
    log_q = F.log_softmax(s.to(dtype) / temperature, dim=-1).gather(-1, ids)
    log_p = lp.to(dtype)
    if not tail:
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
        d = _xlogx_ratio(log_p, log_q)
    else:
        d = _xlogx_ratio(log_p, log_q)
        r_t = (-torch.expm1(torch.logsumexp(log_p, dim=-1))).clamp_min(0.0)
        r_s = (-torch.expm1(torch.logsumexp(log_q, dim=-1))).clamp_min(torch.finfo(dtype).tiny)
        has_tail = r_t > 0
        safe_r_t = torch.where(has_tail, r_t, torch.ones_like(r_t))
        d = d + torch.where(has_tail, safe_r_t * (safe_r_t.log() - r_s.log()), torch.zeros_like(r_t))
    return _reduce(d, d.shape[0], num_valid, temperature)
