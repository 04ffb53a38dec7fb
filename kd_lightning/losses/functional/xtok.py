"""Losses between a teacher and a student that tokenize the same text differently, as pure tensor functions.

The two models' positions and vocabularies do not correspond one to one, so nothing here compares logit
``j`` of one with logit ``j`` of the other. Notation: ``p = softmax(z_t / T)`` is the teacher's next-token
distribution over its ``V_t`` tokens, ``q = softmax(z_s / T)`` the student's over its ``V_s`` tokens.

* :func:`uld_loss` — Universal Logit Distillation (Boizard et al. 2024, "Towards Cross-Tokenizer
  Distillation: the Universal Logit Distillation Loss for LLMs"): the two distributions are compared after
  sorting, so only the *shape* of the distribution (how peaked it is) is transferred, never which token.
* :func:`span_logprob_loss`, :func:`shared_vocab_kl` and :func:`span_alignment_loss` — span alignment:
  the text is cut into the smallest spans whose edges are token boundaries in both tokenizations
  (:func:`kd_lightning.lm.xtok.align_tokens` finds them); each span's probability under each model is
  matched, and at span edges, where both models predict the start of the same next span, the next-token
  distributions are compared (by KL over the token strings both vocabularies share when the next token is
  such a string, by ULD otherwise).

Everything runs in at least fp32. A mask marks the positions (or spans) that count; every term is a mean
over the counted ones, or a sum over them divided by ``num_valid`` when the caller gives a larger total.
With nothing counted a term is a zero that stays attached to the student's graph.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_temperature

__all__ = ["uld_loss", "span_logprob_loss", "shared_vocab_kl", "span_alignment_loss", "span_logprobs",
           "next_token_logprobs"]

Number = Union[int, float, Tensor]
# A span's log-probability is kept at most this far below 0, so that log(1 − P) stays finite when a model
# is certain of a span (float32 rounds log-probabilities of near-certain tokens to exactly 0).
MAX_SPAN_LOGPROB = -1e-6


def _dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _mean(per_item: Tensor, count: int, num_valid: Optional[Number], anchor: Tensor) -> Tensor:
    """Σ per_item / (num_valid or count); a zero attached to ``anchor``'s graph when nothing counts."""
    if per_item.numel() == 0:
        return anchor.sum().to(per_item.dtype) * 0.0
    divisor = num_valid if num_valid is not None else count
    if isinstance(divisor, Tensor):
        divisor = divisor.to(per_item.dtype).clamp_min(1.0)
    else:
        divisor = max(float(divisor), 1.0)
    return per_item.sum() / divisor


def _rows(x: Tensor, mask: Optional[Tensor], name: str) -> Tensor:
    """The counted rows of ``x [..., V]`` as ``[N, V]``."""
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    if tuple(mask.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"{name}: mask {tuple(mask.shape)} must match the logits' leading shape {tuple(x.shape[:-1])}")
    return x[mask.bool()]


def sorted_desc(x: Tensor) -> Tensor:
    """``x`` sorted in decreasing order along the last dimension, differentiable (a gather by the order).
    On the CPU the order comes from NumPy, whose vectorised sort is many times faster than torch's there."""
    if x.device.type != "cpu":
        return x.sort(dim=-1, descending=True).values
    values = x.detach().numpy()
    if not x.requires_grad:
        return torch.from_numpy(-np.sort(-values, axis=-1))
    order = torch.from_numpy(np.argsort(-values, axis=-1))
    return x.gather(-1, order)


def uld_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Optional[Tensor] = None, *,
             temperature: float = 1.0, num_valid: Optional[Number] = None) -> Tensor:
    """Universal Logit Distillation (Boizard et al. 2024): the sorted-probability distance.

    ``student_logits [..., V_s]`` and ``teacher_logits [..., V_t]`` are already paired position by position
    (same leading shape; the vocabularies may differ in size and in meaning). At each counted position,
    with ``p↓`` and ``q↓`` the teacher's and the student's probability vectors (at temperature ``T``)
    sorted in decreasing order and the shorter one padded with zeros to ``max(V_t, V_s)``::

        d = Σ_j |p↓_j − q↓_j|

    (the Wasserstein-1 distance between the two distributions when the ``j``-th most likely token of one is
    matched with the ``j``-th of the other). The loss is ``Σ_{counted} d / N`` with ``N`` the number of
    counted positions (``mask [...]``, True = counted; None: all), or ``num_valid``. ``0 ≤ d ≤ 2``.
    The paper pairs teacher position ``i`` with student position ``i`` over the shorter of the two
    sequences and adds this term, weighted, to the student's cross-entropy (:class:`~kd_lightning.losses.ULD`).
    """
    t = check_temperature(temperature)
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(f"uld_loss: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same leading shape (pair the positions first)")
    dtype = _dtype(student_logits, teacher_logits)
    s = _rows(student_logits, mask, "uld_loss").to(dtype)
    z = _rows(teacher_logits, mask, "uld_loss").to(dtype)
    q = sorted_desc(torch.softmax(s / t, dim=-1))
    p = sorted_desc(torch.softmax(z / t, dim=-1))
    width = max(p.shape[-1], q.shape[-1])
    q = F.pad(q, (0, width - q.shape[-1]))
    p = F.pad(p, (0, width - p.shape[-1]))
    per_position = (p - q).abs().sum(-1)
    return _mean(per_position, per_position.shape[0], num_valid, student_logits)


def next_token_logprobs(logits: Tensor, input_ids: Tensor) -> Tensor:
    """``[B, L]`` log-probabilities (fp32, T = 1) of each token given the ones before it, under teacher
    forcing: entry ``j`` is ``log softmax(logits[:, j − 1])[input_ids[:, j]]``; entry 0 (no prediction) is 0."""
    dtype = _dtype(logits)
    lp = torch.log_softmax(logits[:, :-1].to(dtype), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(lp, (1, 0))


def span_logprobs(token_logprobs: Tensor, span_index: Tensor, num_spans: int) -> Tensor:
    """``[B, K]`` sums of ``token_logprobs [B, L]`` over the tokens of each span (``span_index [B, L]``, the
    span of each token, -1 for none): by the chain rule, the log-probability of the span's text given
    everything before it."""
    index = torch.where(span_index >= 0, span_index, torch.full_like(span_index, num_spans))
    out = token_logprobs.new_zeros(token_logprobs.shape[0], num_spans + 1)
    return out.scatter_add(1, index, token_logprobs)[:, :num_spans]


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x < 0, accurate at both ends."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def span_logprob_loss(student_span_logprobs: Tensor, teacher_span_logprobs: Tensor,
                      mask: Optional[Tensor] = None, *, num_valid: Optional[Number] = None) -> Tensor:
    """The span term: a Bernoulli KL between the teacher's and the student's probability of each span.

    With ``a = log P_t(span | text before)`` and ``b = log P_s(span | text before)`` (both ``≤ 0``; kept
    ``≤ −1e-6`` so that the logarithms below stay finite)::

        d = P_t (a − b) + (1 − P_t) (log(1 − P_t) − log(1 − P_s))

    the KL divergence from the teacher's two-outcome distribution ("the text goes on with this span" or
    not) to the student's; ``d ≥ 0``, zero exactly when the two span probabilities are equal. Its gradient
    in ``b`` is ``(P_s − P_t) / (1 − P_s)``: the student's span probability moves toward the teacher's from
    either side. The loss is ``Σ_{counted spans} d / N`` (``mask [B, K]``; ``N`` their number or
    ``num_valid``).
    """
    if student_span_logprobs.shape != teacher_span_logprobs.shape:
        raise ValueError(f"span_logprob_loss: student {tuple(student_span_logprobs.shape)} and teacher "
                         f"{tuple(teacher_span_logprobs.shape)} span log-probabilities must have one shape")
    dtype = _dtype(student_span_logprobs, teacher_span_logprobs)
    b = student_span_logprobs.to(dtype).clamp_max(MAX_SPAN_LOGPROB)
    a = teacher_span_logprobs.to(dtype).clamp_max(MAX_SPAN_LOGPROB)
    if mask is not None:
        b, a = b[mask.bool()], a[mask.bool()]
    p_t = a.exp()
    d = p_t * (a - b) + (1.0 - p_t) * (_log1mexp(a) - _log1mexp(b))
    return _mean(d, d.numel(), num_valid, student_span_logprobs)


def shared_vocab_kl(student_logits: Tensor, teacher_logits: Tensor, student_shared_ids: Tensor,
                    teacher_shared_ids: Tensor, mask: Optional[Tensor] = None, *, temperature: float = 1.0,
                    num_valid: Optional[Number] = None) -> Tensor:
    """KL over the token strings both vocabularies hold, each distribution renormalised over them.

    ``teacher_shared_ids [S]`` and ``student_shared_ids [S]`` list the same ``S`` strings in each
    vocabulary (entry ``i`` of one is the same text as entry ``i`` of the other). At each counted position
    (``mask [...]``) of the paired ``student_logits [..., V_s]`` / ``teacher_logits [..., V_t]``::

        p̃ = softmax(z_t[teacher_shared_ids] / T),   q̃ = softmax(z_s[student_shared_ids] / T)
        d = KL(p̃ ‖ q̃) = Σ_i p̃_i (log p̃_i − log q̃_i)

    and the loss is ``Σ_{counted} d / N``. (Renormalising over the shared strings equals conditioning
    both models on "the next token is one of the shared strings".)
    """
    t = check_temperature(temperature)
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(f"shared_vocab_kl: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same leading shape")
    if student_shared_ids.shape != teacher_shared_ids.shape or student_shared_ids.ndim != 1:
        raise ValueError(f"shared_vocab_kl: student_shared_ids {tuple(student_shared_ids.shape)} and "
                         f"teacher_shared_ids {tuple(teacher_shared_ids.shape)} must be two lists of one length")
    dtype = _dtype(student_logits, teacher_logits)
    s = _rows(student_logits, mask, "shared_vocab_kl").index_select(-1, student_shared_ids).to(dtype)
    z = _rows(teacher_logits, mask, "shared_vocab_kl").index_select(-1, teacher_shared_ids).to(dtype)
    log_q = torch.log_softmax(s / t, dim=-1)
    log_p = torch.log_softmax(z / t, dim=-1)
    per_position = (log_p.exp() * (log_p - log_q)).sum(-1)
    return _mean(per_position, per_position.shape[0], num_valid, student_logits)


def _rows_at(x: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
    """``x [B, L, ...]`` at the (row, position) pairs ``rows [n]``, ``positions [n]`` -> ``[n, ...]``."""
    return x.reshape(-1, *x.shape[2:]).index_select(0, rows * x.shape[1] + positions)


def span_alignment_loss(student_logits: Tensor, teacher_logits: Tensor, student_ids: Tensor, teacher_ids: Tensor,
                        student_span: Tensor, teacher_span: Tensor, student_edge: Tensor, teacher_edge: Tensor,
                        student_shared_ids: Tensor, teacher_shared_ids: Tensor, *,
                        temperature: float = 1.0) -> Dict[str, Tensor]:
    """The terms of span alignment for one batch (see :class:`~kd_lightning.losses.SpanAlign`).

    Inputs (what :class:`~kd_lightning.lm.xtok.CrossTokenizerCollate` makes): the logits ``[B, L_s, V_s]`` /
    ``[B, L_t, V_t]`` and token ids ``[B, L_s]`` / ``[B, L_t]`` of the same texts; ``student_span`` /
    ``teacher_span`` the counted span of every token (spans ``0..K−1`` per row, -1 for tokens in none);
    ``student_edge`` / ``teacher_edge [B, E]`` the pairs of positions that end the same text in both
    tokenizations (the last token before a common boundary; -1 pads) — there both models predict the first
    token of the same next span; ``student_shared_ids`` / ``teacher_shared_ids [S]`` the shared strings.

    Returns (each a mean over its own counted items):

    * ``span``: :func:`span_logprob_loss` over the counted spans, with each span's log-probability the sum
      of its tokens' :func:`next_token_logprobs` (``T = 1``: the models' real probabilities of the text);
    * ``kl``: :func:`shared_vocab_kl` at the edges whose next token is the same shared string in both
      tokenizations (the same text, hence the same characters);
    * ``uld``: :func:`uld_loss` at the other edges (the next tokens differ, or one is not a shared string);
    * ``next``: both together, ``(Σ_{kl edges} d_kl + Σ_{uld edges} d_uld) / (number of edges)``.
    """
    dtype = _dtype(student_logits, teacher_logits)
    s_lp = next_token_logprobs(student_logits, student_ids)
    t_lp = next_token_logprobs(teacher_logits, teacher_ids)
    num_spans = int(max(int(student_span.max()) if student_span.numel() else -1,
                        int(teacher_span.max()) if teacher_span.numel() else -1)) + 1
    s_spans = span_logprobs(s_lp, student_span, num_spans)
    t_spans = span_logprobs(t_lp, teacher_span, num_spans)
    counts_s = span_logprobs(torch.ones_like(s_lp), student_span, num_spans)
    counts_t = span_logprobs(torch.ones_like(t_lp), teacher_span, num_spans)
    span_mask = (counts_s > 0) & (counts_t > 0)
    span = span_logprob_loss(s_spans, t_spans, span_mask)

    # The edges as (row, position) pairs: only real ones are gathered, never the padding of [B, E].
    row, col = ((student_edge >= 0) & (teacher_edge >= 0)).nonzero(as_tuple=True)
    s_pos, t_pos = student_edge[row, col], teacher_edge[row, col]
    s_at, t_at = _rows_at(student_logits, row, s_pos), _rows_at(teacher_logits, row, t_pos)
    s_next = _rows_at(student_ids, row, s_pos + 1)
    t_next = _rows_at(teacher_ids, row, t_pos + 1)
    edge = torch.ones_like(s_next, dtype=torch.bool)
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    s_to_shared = torch.full((v_s,), -1, dtype=torch.long, device=student_ids.device)
    s_to_shared[student_shared_ids] = torch.arange(student_shared_ids.numel(), device=student_ids.device)
    t_to_shared = torch.full((v_t,), -1, dtype=torch.long, device=teacher_ids.device)
    t_to_shared[teacher_shared_ids] = torch.arange(teacher_shared_ids.numel(), device=teacher_ids.device)
    shared_next = s_to_shared[s_next.clamp(0, v_s - 1)]
    same = edge & (shared_next >= 0) & (shared_next == t_to_shared[t_next.clamp(0, v_t - 1)])
    other = edge & ~same
    n_edges = int(edge.sum())
    kl_sum = shared_vocab_kl(s_at, t_at, student_shared_ids, teacher_shared_ids, same, temperature=temperature,
                             num_valid=1.0)
    uld_sum = uld_loss(s_at, t_at, other, temperature=temperature, num_valid=1.0)
    n_same, n_other = int(same.sum()), int(other.sum())
    return {
        "span": span,
        "kl": kl_sum / max(n_same, 1),
        "uld": uld_sum / max(n_other, 1),
        "next": (kl_sum + uld_sum) / max(n_edges, 1),
        "spans": torch.tensor(float(span_mask.sum()), dtype=dtype, device=student_logits.device),
        "edges": torch.tensor(float(n_edges), dtype=dtype, device=student_logits.device),
        "shared_edges": torch.tensor(float(n_same), dtype=dtype, device=student_logits.device),
    }
