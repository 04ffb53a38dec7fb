"""Token-level divergences for language-model distillation, as pure tensor functions.

Notation (the formulas are written out in ``docs/language-models.md``): ``z_s``, ``z_t`` are student / teacher logits
``[..., V]`` at next-token positions, ``p = softmax(z_t / T)`` (teacher), ``q = softmax(z_s / T)``
(student), ``KL(a‖b) = Σ_v a_v (log a_v − log b_v)``. A mask ``[...]`` marks the positions that count;
every divergence ``d`` is reduced as

    T² · Σ_{counted positions} d(p, q) / N

with ``N`` the number of counted positions, or ``num_valid`` when the caller knows a larger total (the
tokens of a whole optimizer step across micro-batches and ranks).

Everything runs in log space and in at least fp32 (bf16 / fp16 inputs are upcast, float64 stays float64
for ``gradcheck``). Vocabulary entries with a ``-inf`` logit have probability 0 and contribute
``0 · log 0 = 0``, never NaN.

**Memory.** Every function here runs chunked over the counted positions: one chunk of ``chunk_size``
rows is gathered, upcast to fp32 and turned into log-probabilities, its value is added up and its
gradient with respect to the student logits is computed right there (in closed form) and written, in the
logits' own dtype, into a gradient buffer of the logits' shape; backward only scales that buffer. The
fp32 peak is one chunk's ``[chunk, V]`` temporaries instead of the whole batch's, and nothing is
recomputed in backward. Values and gradients equal the straightforward unchunked form (kept as
``_unchunked_token_divergence`` for tests and the benchmark) to float rounding, whatever the chunk size.
:func:`token_divergence_fused` goes one step further and takes the student's final hidden states and
output-embedding weight instead of its logits, so the student's ``[tokens, V]`` logits never exist; given the
teacher's final hidden states and output layer in place of its logits, it computes the teacher's logits
chunk by chunk too, so neither model's ``[tokens, V]`` logits exist.

A gradient for teacher logits that require one is computed too (by autograd, one chunk at a time);
teachers run under ``no_grad`` never pay for it. The gradient is computed in the forward pass, so the
result supports one backward (no ``retain_graph`` second pass, no double backward).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..checks import check_temperature

__all__ = ["token_divergence", "token_divergence_topk", "token_divergence_fused", "token_cross_entropy",
           "token_cross_entropy_fused", "TOKEN_DIVERGENCES",
           "default_chunk_size", "fused_chunk_size"]

TOKEN_DIVERGENCES = ("forward", "reverse", "jsd", "skew_forward", "skew_reverse", "tvd")

# Stand-in for log 0 inside mixtures: finite, so that logaddexp and its gradient stay defined where both
# distributions are zero (those entries are then weighted by a zero probability and dropped).
_LOG_ZERO = -1e30

# Default chunk: about 2**22 vocabulary entries (16 MiB per fp32 [chunk, V] temporary; a chunk's work holds
# about five of them), at most 1024 rows.
CHUNK_ELEMENTS = 2 ** 22
MAX_CHUNK_ROWS = 1024

Number = Union[int, float, Tensor]


def default_chunk_size(vocab: int) -> int:
    """Rows per chunk when ``chunk_size=None``: ``min(1024, 2**22 // vocab)`` (131 rows at V = 32,000, 32 at
    V = 128,256): small enough that a chunk's fp32 work (~80 MiB) is a small part of the inputs' own size."""
    return max(1, min(MAX_CHUNK_ROWS, CHUNK_ELEMENTS // max(int(vocab), 1)))


# A fused output layer reads W [V, H] and adds to its gradient once per chunk: below ~128 rows those passes
# over W (1 GiB of fp32 gradient at V = 128,256, H = 2,048), not the arithmetic, set the time (2x slower
# with 32 rows on the CPU), while a 128-row chunk's fp32 work stays well under W's own gradient.
FUSED_MIN_ROWS = 128


def fused_chunk_size(vocab: int) -> int:
    """Rows per chunk of the fused-head forms when ``chunk_size=None``: ``max(128, default_chunk_size(vocab))``
    (131 rows at V = 32,000, 128 at V = 128,256)."""
    return max(FUSED_MIN_ROWS, default_chunk_size(vocab))


def _check_chunk_size(chunk_size: Optional[int], vocab: int, fused: bool = False) -> int:
    if chunk_size is None:
        return fused_chunk_size(vocab) if fused else default_chunk_size(vocab)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows per chunk (or None for the default), "
                         f"got {chunk_size!r}")
    return chunk_size


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


def _reduce(per_position: Tensor, count: int, num_valid: Optional[Number], temperature: float) -> Tensor:
    denominator = num_valid if num_valid is not None else count
    if isinstance(denominator, Tensor):
        denominator = denominator.to(per_position.dtype).clamp_min(1)
    else:
        if denominator < 0:
            raise ValueError(f"num_valid must be >= 0, got {denominator!r}")
        denominator = max(float(denominator), 1.0)
    # Nothing counted: the sum over no positions is 0 (with a zero gradient), never 0/0.
    return (temperature ** 2) * per_position.sum() / denominator


def _scale(count: int, num_valid: Optional[Number], temperature: float, dtype: torch.dtype,
           device: torch.device) -> Union[float, Tensor]:
    """``T² / N`` (``N`` = ``num_valid`` or the count, at least 1); ``num_valid`` is a constant."""
    denominator = num_valid if num_valid is not None else count
    if isinstance(denominator, Tensor):
        return (temperature ** 2) / denominator.detach().to(device=device, dtype=dtype).clamp_min(1)
    if denominator < 0:
        raise ValueError(f"num_valid must be >= 0, got {denominator!r}")
    return (temperature ** 2) / max(float(denominator), 1.0)


def _canonical(divergence: str, beta: float, alpha: float) -> str:
    """The endpoints of jsd and the skews are the plain KLs (TRL's special cases)."""
    if (divergence == "jsd" and beta == 0.0) or (divergence == "skew_forward" and alpha == 0.0):
        return "forward"
    if (divergence == "jsd" and beta == 1.0) or (divergence == "skew_reverse" and alpha == 0.0):
        return "reverse"
    return divergence


def _divergence_rows(log_p: Tensor, log_q: Tensor, divergence: str, beta: float, alpha: float) -> Tensor:
    """Per-row ``d(p, q)`` from log-probabilities ``[rows, V]``, written as the formulas (autograd-friendly)."""
    divergence = _canonical(divergence, beta, alpha)
    if divergence == "forward":
        return _xlogx_ratio(log_p, log_q)
    if divergence == "reverse":
        return _xlogx_ratio(log_q, log_p)
    if divergence == "jsd":
        log_m = _log_mixture(beta, log_p, log_q)
        return beta * _xlogx_ratio(log_p, log_m) + (1.0 - beta) * _xlogx_ratio(log_q, log_m)
    if divergence == "skew_forward":
        return _xlogx_ratio(log_p, _log_mixture(alpha, log_p, log_q))
    if divergence == "skew_reverse":
        return _xlogx_ratio(log_q, _log_mixture(1.0 - alpha, log_p, log_q))
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)  # tvd


# ------------------------------------------------------------------------------ per-chunk kernels
# A kernel maps one chunk of every row input ([c, ...] each) and the tuple of which inputs need a gradient
# to (Σ_rows d as a 0-dim tensor, [gradient of that sum w.r.t. each input, in the compute dtype, or None]).
Kernel = Callable[[Sequence[Tensor], Tuple[bool, ...]], Tuple[Tensor, List[Optional[Tensor]]]]


def _through_softmax(q: Tensor, g: Tensor, temperature: float) -> Tensor:
    """``∂/∂z`` of a function with ``∂/∂q = g`` where ``q = softmax(z/T)``: ``q ⊙ (g − Σ_v q_v g_v) / T``
    (in place on ``g``)."""
    return g.sub_((q * g).sum(-1, keepdim=True)).mul_(q).div_(temperature)


def _log_probs(z: Tensor, dtype: torch.dtype, temperature: float) -> Tensor:
    """``log_softmax(z/T)`` in ``dtype`` (the upcast fused into the softmax where T = 1)."""
    if temperature == 1.0:
        return F.log_softmax(z, dim=-1, dtype=dtype)
    return F.log_softmax(z.to(dtype) / temperature, dim=-1)


def _closed_form(s: Tensor, t: Tensor, dtype: torch.dtype, temperature: float, divergence: str, beta: float,
                 alpha: float, need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """``Σ_rows d(p, q)`` and its gradient with respect to the student logits ``s`` (teacher constant).

    With ``q = softmax(s/T)`` every gradient is ``q ⊙ (g − Σ q g) / T`` for ``g = ∂d/∂q``:
    forward ``g = −p/q`` (giving ``(q − p)/T``); reverse ``g = log q − log p`` (+1, which cancels);
    jsd ``g = (1−β)(log q − log m)``; skew forward ``g = −(1−α) p/m``; skew reverse
    ``g = log q − log m − α q/m``; tvd ``g = ½ sign(q − p)``. Entries with zero probability contribute 0.
    """
    divergence = _canonical(divergence, beta, alpha)
    log_q, log_p = _log_probs(s, dtype, temperature), _log_probs(t, dtype, temperature)
    if divergence == "forward":
        p = log_p.exp()
        # p (log p − log q) in place of log p; 0 · (−inf) = nan where p = 0 becomes 0, +inf (q = 0 < p) stays
        x = log_p.sub_(log_q).mul_(p).nan_to_num_(nan=0.0, posinf=float("inf"), neginf=float("-inf"))
        value = x.sum()
        del x, log_p
        if not need_grad:
            return value, None
        return value, log_q.exp_().sub_(p).div_(temperature)
    if divergence == "tvd":
        diff = log_q.exp().sub_(log_p.exp())
        value = 0.5 * diff.abs().sum()
        if not need_grad:
            return value, None
        return value, _through_softmax(log_q.exp_(), diff.sign_().mul_(0.5), temperature)
    if divergence == "reverse":
        q = log_q.exp()
        x = (log_q - log_p).masked_fill_(q == 0, 0.0)
        kl = (q * x).sum(-1, keepdim=True)
        value = kl.sum()
        if not need_grad:
            return value, None
        return value, x.sub_(kl).mul_(q).div_(temperature)
    if divergence == "jsd":
        log_m = _log_mixture(beta, log_p, log_q)
        p = log_p.exp()
        kl_pm = (log_p - log_m).mul_(p).masked_fill_(p == 0, 0.0).sum()
        del p
        q = log_q.exp()
        r = (log_q - log_m).masked_fill_(q == 0, 0.0)
        kl_qm = (q * r).sum(-1, keepdim=True)
        value = beta * kl_pm + (1.0 - beta) * kl_qm.sum()
        if not need_grad:
            return value, None
        return value, r.sub_(kl_qm).mul_(q).mul_((1.0 - beta) / temperature)
    if divergence == "skew_forward":  # m = αp + (1−α)q, d = KL(p‖m)
        log_m = _log_mixture(alpha, log_p, log_q)
        p = log_p.exp()
        x = log_p - log_m
        value = (p * x).masked_fill_(p == 0, 0.0).sum()
        if not need_grad:
            return value, None
        g = x.exp_().masked_fill_(p == 0, 0.0).mul_(-(1.0 - alpha))  # −(1−α) p/m
        del p
        return value, _through_softmax(log_q.exp_(), g, temperature)
    # skew_reverse: m = (1−α)p + αq, d = KL(q‖m)
    log_m = _log_mixture(1.0 - alpha, log_p, log_q)
    q = log_q.exp()
    absent = q == 0
    x = (log_q - log_m).masked_fill_(absent, 0.0)
    value = (q * x).sum()
    if not need_grad:
        return value, None
    ratio = (log_q - log_m).exp_().masked_fill_(absent, 0.0)  # q/m
    return value, _through_softmax(q, x.sub_(ratio.mul_(alpha)), temperature)


def _autograd_chunk(rows_fn: Callable[..., Tensor], chunk: Sequence[Tensor], needs: Tuple[bool, ...],
                    dtype: torch.dtype) -> Tuple[Tensor, List[Optional[Tensor]]]:
    """``Σ rows_fn(*chunk)`` and, by a local autograd pass over this chunk only, its gradients."""
    if not any(needs):
        with torch.no_grad():
            return rows_fn(*[x.to(dtype) if x.is_floating_point() else x for x in chunk]).sum(), [None] * len(chunk)
    with torch.enable_grad():
        leaves = [x.detach().to(dtype).requires_grad_() if need else
                  (x.detach().to(dtype) if x.is_floating_point() else x) for x, need in zip(chunk, needs)]
        value = rows_fn(*leaves).sum()
        wrt = [leaf for leaf, need in zip(leaves, needs) if need]
        found = iter(torch.autograd.grad(value, wrt))
    return value.detach(), [next(found) if need else None for need in needs]


def _divergence_kernel(dtype: torch.dtype, temperature: float, divergence: str, beta: float, alpha: float) -> Kernel:
    def rows_fn(s: Tensor, t: Tensor) -> Tensor:
        return _divergence_rows(F.log_softmax(t / temperature, dim=-1), F.log_softmax(s / temperature, dim=-1),
                                divergence, beta, alpha)

    def kernel(chunk: Sequence[Tensor], needs: Tuple[bool, ...]):
        if needs[1]:  # a teacher that wants a gradient: autograd over the chunk (both gradients)
            return _autograd_chunk(rows_fn, chunk, needs, dtype)
        value, grad = _closed_form(chunk[0], chunk[1], dtype, temperature, divergence, beta, alpha, needs[0])
        return value, [grad, None]

    return kernel


# --------------------------------------------------------------------------------- chunked rows
def _rows_view(x: Tensor) -> Optional[Tensor]:
    """``x`` as ``[rows, last]`` without a copy, or None when its strides do not allow one."""
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError:
        return None


def _unravel(index: Tensor, shape: Sequence[int]) -> Tuple[Tensor, ...]:
    out = []
    for size in reversed(shape):
        out.append(index % size)
        index = torch.div(index, size, rounding_mode="floor")
    return tuple(reversed(out))


def _take(x: Tensor, flat: Optional[Tensor], start: int, stop: int, index: Optional[Tensor]) -> Tensor:
    """Rows ``start:stop`` (or the flat ``index``) of ``x [..., last]`` as ``[c, last]``."""
    if flat is not None:
        return flat[start:stop] if index is None else flat.index_select(0, index)
    if index is None:
        index = torch.arange(start, stop, device=x.device)
    return x[_unravel(index, x.shape[:-1])]


def _grad_buffer(x: Tensor, partial: bool) -> Tensor:
    """A contiguous gradient buffer of ``x``'s shape and dtype (zeros when only some rows are written)."""
    return (torch.zeros if partial else torch.empty)(x.shape, dtype=x.dtype, device=x.device)


def _put(buffer: Tensor, start: int, stop: int, index: Optional[Tensor], rows: Tensor) -> None:
    flat = buffer.view(-1, buffer.shape[-1])
    if index is None:
        flat[start:stop].copy_(rows)
    else:
        flat.index_copy_(0, index, rows.to(buffer.dtype))


def _scale_saved(ctx, grad_out: Tensor) -> List[Tensor]:
    """The stored gradients times ``grad_out``: as they are for 1 (so a retained graph can run backward
    again), scaled in place otherwise (no second ``[tokens, V]`` buffer; then the graph is spent)."""
    if getattr(ctx, "consumed", False):
        raise RuntimeError("a chunked token loss computes its gradient in the forward pass and was already "
                           "back-propagated with a scaled output gradient; recompute the loss instead of "
                           "calling backward(retain_graph=True) again")
    saved = list(ctx.saved_tensors)
    if float(grad_out) != 1.0:
        ctx.consumed = True
        for g in saved:
            g.mul_(grad_out)
    return saved


class _GradientsInForward(torch.autograd.Function):
    """Base of the chunked functions: forward stores every input's gradient (``ctx.needs`` says which, after
    five non-tensor arguments); backward only scales them by the output's gradient."""

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        saved = iter(_scale_saved(ctx, grad_out))
        return (None,) * 5 + tuple(next(saved) if need else None for need in ctx.needs)


class _ChunkedRows(_GradientsInForward):
    """``scale · Σ_chunks kernel(chunk)``; the gradients of the row inputs are filled chunk by chunk in forward.

    Row inputs share their leading shape ``[...]`` (the positions); ``rows`` are the flat indices of the
    counted positions (None: all).
    """

    @staticmethod
    def forward(ctx, kernel: Kernel, rows: Optional[Tensor], chunk_size: int, scale: Union[float, Tensor],
                out_dtype: torch.dtype, *inputs: Tensor) -> Tensor:
        needs = tuple(bool(n) for n in ctx.needs_input_grad[5:])
        total = inputs[0].shape[:-1].numel() if rows is None else rows.numel()
        grads = [_grad_buffer(x, rows is not None) if need else None for x, need in zip(inputs, needs)]
        flats = [_rows_view(x) for x in inputs]
        value = torch.zeros((), dtype=out_dtype, device=inputs[0].device)
        for start in range(0, total, chunk_size):
            stop = min(start + chunk_size, total)
            index = None if rows is None else rows[start:stop]
            chunk = [_take(x, f, start, stop, index) for x, f in zip(inputs, flats)]
            part, chunk_grads = kernel(chunk, needs)
            value += part
            for buffer, g in zip(grads, chunk_grads):
                if buffer is not None:
                    _put(buffer, start, stop, index, g.mul_(scale))
            # gone before the next chunk's work starts, which they would otherwise add to
            del chunk, chunk_grads, g
        ctx.needs = needs
        ctx.save_for_backward(*[g for g in grads if g is not None])
        return value * scale


class _FusedHead(_GradientsInForward):
    """Like :class:`_ChunkedRows`, with the first row input computed per chunk as ``hidden @ weightᵀ + bias``;
    gradients go to ``hidden``, ``weight`` and ``bias`` (accumulated over chunks in their own dtype)."""

    @staticmethod
    def forward(ctx, kernel: Kernel, rows: Optional[Tensor], chunk_size: int, scale: Union[float, Tensor],
                out_dtype: torch.dtype, hidden: Tensor, weight: Tensor, bias: Optional[Tensor],
                *others: Tensor) -> Tensor:
        need_h, need_w, need_b = (bool(n) for n in ctx.needs_input_grad[5:8])
        need_others = tuple(bool(n) for n in ctx.needs_input_grad[8:])
        needs = (need_h or need_w or need_b,) + need_others
        partial = rows is not None
        total = hidden.shape[:-1].numel() if rows is None else rows.numel()
        grad_h = _grad_buffer(hidden, partial) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        grad_o = [_grad_buffer(x, partial) if need else None for x, need in zip(others, need_others)]
        flat_h = _rows_view(hidden)
        flats = [_rows_view(x) for x in others]
        value = torch.zeros((), dtype=out_dtype, device=hidden.device)
        for start in range(0, total, chunk_size):
            stop = min(start + chunk_size, total)
            index = None if rows is None else rows[start:stop]
            h = _take(hidden, flat_h, start, stop, index)
            logits = F.linear(h, weight, bias)
            chunk = [logits] + [_take(x, f, start, stop, index) for x, f in zip(others, flats)]
            part, chunk_grads = kernel(chunk, needs)
            value += part
            del logits, chunk
            g = chunk_grads[0]
            if g is not None:
                g = g.mul_(scale).to(h.dtype)
                if need_h:
                    _put(grad_h, start, stop, index, g @ weight)
                if need_w:
                    grad_w.addmm_(g.t(), h)
                if need_b:
                    grad_b += g.sum(0, dtype=torch.float32 if g.dtype != torch.float64 else g.dtype).to(grad_b.dtype)
            for buffer, go in zip(grad_o, chunk_grads[1:]):
                if buffer is not None:
                    _put(buffer, start, stop, index, go.mul_(scale))
            # this chunk's fp32 gradient and its cast would otherwise live on into the next chunk's peak
            del g, chunk_grads
        ctx.needs = (need_h, need_w, need_b) + need_others
        ctx.save_for_backward(*[g for g in [grad_h, grad_w, grad_b] + grad_o if g is not None])
        return value * scale


def _check_divergence_args(name: str, divergence: str, temperature: float, beta: float,
                           alpha: float) -> Tuple[float, float, float]:
    if divergence not in TOKEN_DIVERGENCES:
        raise ValueError(f"{name}: divergence must be one of {', '.join(TOKEN_DIVERGENCES)}, got {divergence!r}")
    return check_temperature(temperature), _check_fraction("beta", beta), _check_fraction("alpha", alpha)


def token_divergence(student_logits: Tensor, teacher_logits: Tensor, mask: Optional[Tensor] = None, *,
                     divergence: str = "forward", temperature: float = 1.0, beta: float = 0.5,
                     alpha: float = 0.1, num_valid: Optional[Number] = None,
                     chunk_size: Optional[int] = None) -> Tensor:
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

    Runs chunked over the counted positions (see the module docstring): the fp32 work exists for
    ``chunk_size`` rows at a time and the gradient is computed with it.

    Args:
        student_logits, teacher_logits: ``[..., V]`` logits of the same shape (any float dtype).
        mask: ``[...]`` booleans, True where the position counts (None: every position).
        num_valid: the divisor ``N``; default the number of counted positions here. A module passes the
            token count of its whole optimizer step so the result does not depend on micro-batching.
        chunk_size: rows per chunk (None: :func:`default_chunk_size` of the vocabulary). It changes the
            peak memory, never the result.

    Returns a scalar in fp32 (float64 for float64 inputs); 0 with a zero gradient when nothing counts.
    """
    name = "token_divergence"
    temperature, beta, alpha = _check_divergence_args(name, divergence, temperature, beta, alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"{name}: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (same vocabulary)")
    if student_logits.ndim < 1:
        raise ValueError(f"{name}: logits need a vocabulary axis, got a scalar")
    chunk = _check_chunk_size(chunk_size, student_logits.shape[-1])
    rows = _counted_rows(mask, student_logits.shape[:-1], student_logits.device, name)
    count = student_logits.shape[:-1].numel() if rows is None else rows.numel()
    dtype = _float_dtype(student_logits, teacher_logits)
    scale = _scale(count, num_valid, temperature, dtype, student_logits.device)
    kernel = _divergence_kernel(dtype, temperature, divergence, beta, alpha)
    return _ChunkedRows.apply(kernel, rows, chunk, scale, dtype, student_logits, teacher_logits)


def token_divergence_fused(hidden: Tensor, lm_head_weight: Tensor, teacher_logits: Optional[Tensor] = None,
                           mask: Optional[Tensor] = None, *, divergence: str = "forward",
                           temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1,
                           lm_head_bias: Optional[Tensor] = None, chunk_size: Optional[int] = None,
                           num_valid: Optional[Number] = None, teacher_hidden: Optional[Tensor] = None,
                           teacher_lm_head_weight: Optional[Tensor] = None,
                           teacher_lm_head_bias: Optional[Tensor] = None) -> Tensor:
    """:func:`token_divergence` of the student logits ``hidden @ lm_head_weightᵀ (+ lm_head_bias)``, fused.

    The student's logits are computed ``chunk_size`` rows at a time (in ``hidden``'s dtype, as the
    model's own output layer would) and dropped after their chunk; the gradients for ``hidden``,
    ``lm_head_weight`` and ``lm_head_bias`` are accumulated chunk by chunk in the forward pass (the weight's
    in its own dtype, as Liger-Kernel's fused linear losses do). So the student's ``[tokens, V]`` logits
    and their fp32 copies never exist; the value and gradients equal
    ``token_divergence(F.linear(hidden, W, b), teacher_logits, ...)``.

    **Teacher head fused too:** pass ``teacher_logits=None`` and the teacher's ``teacher_hidden`` with its
    ``teacher_lm_head_weight`` (and ``teacher_lm_head_bias``) instead: each chunk's teacher logits are then
    computed the same way, without a graph, and dropped with the student's, so neither model's
    ``[tokens, V]`` logits ever exist. The result equals ``token_divergence(F.linear(hidden, W, b),
    F.linear(teacher_hidden, W_t, b_t), ...)``; the teacher's tensors are constants (a frozen teacher), no
    gradient reaches them.

    Args:
        hidden: ``[..., H]`` the student's final hidden states (after its final norm).
        lm_head_weight: ``[V, H]`` its output-embedding weight (``model.get_output_embeddings().weight``).
        teacher_logits: ``[..., V]``; ``mask``, ``num_valid``, ``divergence``, ``temperature``, ``beta``,
            ``alpha`` as in :func:`token_divergence`; ``chunk_size`` too, its default :func:`fused_chunk_size`.
        lm_head_bias: ``[V]`` or None.
        teacher_hidden, teacher_lm_head_weight, teacher_lm_head_bias: ``[..., H_t]``, ``[V, H_t]``, ``[V]``
            or None: the teacher's final hidden states and output layer, in place of ``teacher_logits``.
    """
    name = "token_divergence_fused"
    temperature, beta, alpha = _check_divergence_args(name, divergence, temperature, beta, alpha)
    lead = hidden.shape[:-1]
    if teacher_hidden is None:
        if teacher_logits is None or teacher_lm_head_weight is not None or teacher_lm_head_bias is not None:
            raise ValueError(f"{name}: give the teacher as teacher_logits [..., V], or as teacher_hidden [..., H_t] "
                             "with teacher_lm_head_weight [V, H_t] (teacher_logits=None)")
        _check_head(name, hidden, lm_head_weight, lm_head_bias, teacher_logits.shape[:-1])
        if teacher_logits.shape[-1] != lm_head_weight.shape[0]:
            raise ValueError(f"{name}: teacher logits {tuple(teacher_logits.shape)} and lm_head_weight "
                             f"{tuple(lm_head_weight.shape)} disagree on the vocabulary")
        teacher = [teacher_logits]
    else:
        if teacher_logits is not None:
            raise ValueError(f"{name}: got both teacher_logits and teacher_hidden; give one of them (the teacher's "
                             "hidden states with teacher_lm_head_weight, teacher_logits=None)")
        if teacher_lm_head_weight is None:
            raise ValueError(f"{name}: teacher_hidden needs teacher_lm_head_weight [V, H_t], the teacher's "
                             "output-embedding weight")
        _check_head(name, hidden, lm_head_weight, lm_head_bias, lead)
        _check_head(name, teacher_hidden, teacher_lm_head_weight, teacher_lm_head_bias, lead, who="teacher_")
        if teacher_lm_head_weight.shape[0] != lm_head_weight.shape[0]:
            raise ValueError(f"{name}: teacher_lm_head_weight {tuple(teacher_lm_head_weight.shape)} and lm_head_weight "
                             f"{tuple(lm_head_weight.shape)} disagree on the vocabulary (rows); cut the longer one "
                             "to the shared rows when only padding rows differ")
        teacher = [teacher_hidden.detach()]
    chunk = _check_chunk_size(chunk_size, lm_head_weight.shape[0], fused=True)
    rows = _counted_rows(mask, lead, hidden.device, name)
    count = lead.numel() if rows is None else rows.numel()
    dtype = _float_dtype(hidden, lm_head_weight, teacher[0],
                         *([teacher_lm_head_weight] if teacher_lm_head_weight is not None else []))
    scale = _scale(count, num_valid, temperature, dtype, hidden.device)
    kernel = _divergence_kernel(dtype, temperature, divergence, beta, alpha)
    if teacher_hidden is not None:
        kernel = _teacher_head_kernel(kernel, teacher_lm_head_weight.detach(),
                                      None if teacher_lm_head_bias is None else teacher_lm_head_bias.detach())
    return _FusedHead.apply(kernel, rows, chunk, scale, dtype, hidden, lm_head_weight, lm_head_bias, *teacher)


def _teacher_head_kernel(kernel: Kernel, weight: Tensor, bias: Optional[Tensor]) -> Kernel:
    """``kernel`` over (student logits, teacher hidden rows): the chunk's teacher logits are made here, without
    a graph, and freed when the chunk is done, so only one chunk of them ever exists."""

    def with_teacher_head(chunk: Sequence[Tensor], needs: Tuple[bool, ...]):
        with torch.no_grad():
            teacher_logits = F.linear(chunk[1], weight, bias)
        return kernel([chunk[0], teacher_logits], needs)

    return with_teacher_head


def _check_head(name: str, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], lead: torch.Size,
                who: str = "") -> None:
    if hidden.ndim < 1 or weight.ndim != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"{name}: {who}hidden {tuple(hidden.shape)} must be [..., H] and {who}lm_head_weight "
                         f"{tuple(weight.shape)} [V, H] with the same H")
    if tuple(hidden.shape[:-1]) != tuple(lead):
        raise ValueError(f"{name}: {who}hidden {tuple(hidden.shape)} and the other per-position inputs (leading "
                         f"shape {tuple(lead)}) must share their leading shape")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}: {who}lm_head_bias {tuple(bias.shape)} must be [V] = ({weight.shape[0]},)")


def _unchunked_token_divergence(student_logits: Tensor, teacher_logits: Tensor, mask: Optional[Tensor] = None, *,
                                divergence: str = "forward", temperature: float = 1.0, beta: float = 0.5,
                                alpha: float = 0.1, num_valid: Optional[Number] = None) -> Tensor:
    """The straightforward composite form (whole-batch fp32 upcast, autograd through every op).

    Kept as the reference the chunked path is tested against and as the "naive" form of
    ``scripts/bench_lm.py``; not a public API.
    """
    name = "token_divergence"
    temperature, beta, alpha = _check_divergence_args(name, divergence, temperature, beta, alpha)
    vocab = student_logits.shape[-1]
    rows = _counted_rows(mask, student_logits.shape[:-1], student_logits.device, name)
    s = student_logits.reshape(-1, vocab)
    t = teacher_logits.reshape(-1, vocab)
    if rows is not None:
        s, t = s.index_select(0, rows), t.index_select(0, rows)
    dtype = _float_dtype(student_logits, teacher_logits)
    log_q = F.log_softmax(s.to(dtype) / temperature, dim=-1)
    log_p = F.log_softmax(t.to(dtype) / temperature, dim=-1)
    d = _divergence_rows(log_p, log_q, divergence, beta, alpha)
    return _reduce(d, d.shape[0], num_valid, temperature)


def _topk_rows(s: Tensor, ids: Tensor, lp: Tensor, rest: Optional[Tensor] = None, *, tail: bool,
               temperature: float) -> Tensor:
    """Per-row top-k forward KL (see :func:`token_divergence_topk`) for ``[rows, V]`` student logits."""
    dtype = s.dtype
    log_q = F.log_softmax(s / temperature, dim=-1).gather(-1, ids.long())
    log_p = lp
    if not tail:
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
        return _xlogx_ratio(log_p, log_q)
    d = _xlogx_ratio(log_p, log_q)
    if rest is None:
        r_t = (-torch.expm1(torch.logsumexp(log_p, dim=-1))).clamp_min(0.0)
    else:
        r_t = rest.reshape(log_p.shape[:-1]).to(dtype).clamp_min(0.0)  # stored in fp32: more exact than 1 - Σ p
    r_s = (-torch.expm1(torch.logsumexp(log_q, dim=-1))).clamp_min(torch.finfo(dtype).tiny)
    has_tail = r_t > 0
    safe_r_t = torch.where(has_tail, r_t, torch.ones_like(r_t))
    return d + torch.where(has_tail, safe_r_t * (safe_r_t.log() - r_s.log()), torch.zeros_like(r_t))


def token_divergence_topk(student_logits: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor,
                          mask: Optional[Tensor] = None, *, tail: bool = False, temperature: float = 1.0,
                          teacher_rest: Optional[Tensor] = None, num_valid: Optional[Number] = None,
                          chunk_size: Optional[int] = None) -> Tensor:
    """Forward KL against a stored top-k teacher signal (DistillKit-style offline logits).

    ``teacher_ids`` ``[..., k]`` are the kept vocabulary ids ``S`` and ``teacher_logprobs`` ``[..., k]``
    the teacher's log-probabilities ``log p_i`` at temperature ``T`` (``log_softmax(z_t/T)`` gathered at
    ``S``); ``log q`` is the student's full-vocabulary ``log_softmax(z_s/T)`` gathered at ``S``.

    - ``tail=False`` (renormalised): ``p̃_i = p_i / Σ_S p_j`` and ``d = Σ_S p̃_i (log p̃_i − log q_i)``.
    - ``tail=True`` (a (k+1)-way KL with the leftover mass as one bucket, teacher not renormalised):
      ``d = Σ_S p_i (log p_i − log q_i) + r_t (log r_t − log r_s)``, ``r_t = 1 − Σ_S p_i``,
      ``r_s = 1 − Σ_S q_i``. ``teacher_rest`` ``[...]`` gives ``r_t`` as stored (e.g. computed in fp32
      before the log-probabilities were rounded to fp16); without it ``r_t`` is computed from them.

    Reduced like :func:`token_divergence` (``T² · Σ_counted d / N``) and chunked like it too (``chunk_size``
    rows of the student's ``[.., V]`` upcast at a time, the gradient computed per chunk by autograd). Both
    variants equal the dense forward KL when ``k = V``.
    """
    name = "token_divergence_topk"
    temperature = check_temperature(temperature)
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError(f"{name}: teacher_ids {tuple(teacher_ids.shape)} and teacher_logprobs "
                         f"{tuple(teacher_logprobs.shape)} must have the same shape [..., k]")
    if teacher_ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"{name}: teacher top-k {tuple(teacher_ids.shape)} and student logits "
                         f"{tuple(student_logits.shape)} must share their leading shape")
    if teacher_rest is not None and teacher_rest.shape != student_logits.shape[:-1]:
        raise ValueError(f"{name}: teacher_rest {tuple(teacher_rest.shape)} must have the student's leading shape "
                         f"{tuple(student_logits.shape[:-1])}")
    vocab, k = student_logits.shape[-1], teacher_ids.shape[-1]
    if k > vocab:
        raise ValueError(f"{name}: k = {k} kept ids exceed the student's vocabulary of {vocab}")
    chunk = _check_chunk_size(chunk_size, vocab)
    rows = _counted_rows(mask, student_logits.shape[:-1], student_logits.device, name)
    count = student_logits.shape[:-1].numel() if rows is None else rows.numel()
    dtype = _float_dtype(student_logits, teacher_logprobs)
    scale = _scale(count, num_valid, temperature, dtype, student_logits.device)

    def rows_fn(s: Tensor, ids: Tensor, lp: Tensor, *rest: Tensor) -> Tensor:
        return _topk_rows(s, ids, lp, rest[0] if rest else None, tail=tail, temperature=temperature)

    def kernel(chunk_inputs: Sequence[Tensor], needs: Tuple[bool, ...]):
        return _autograd_chunk(rows_fn, chunk_inputs, needs, dtype)

    inputs = [student_logits, teacher_ids, teacher_logprobs]
    if teacher_rest is not None and tail:
        inputs.append(teacher_rest.unsqueeze(-1))  # [..., 1]: chunked like the other row inputs
    return _ChunkedRows.apply(kernel, rows, chunk, scale, dtype, *inputs)


# ----------------------------------------------------------------------------------- cross-entropy
def _ce_kernel(dtype: torch.dtype) -> Kernel:
    """``Σ_rows −log softmax(z)[y]`` and its gradient ``softmax(z) − onehot(y)``."""

    def kernel(chunk: Sequence[Tensor], needs: Tuple[bool, ...]):
        z, y = chunk
        y = y.reshape(-1, 1).long()
        log_q = F.log_softmax(z.to(dtype), dim=-1)
        value = -log_q.gather(-1, y).sum()
        if not needs[0]:
            return value, [None, None]
        grad = log_q.exp_()
        grad.scatter_add_(-1, y, torch.full(y.shape, -1.0, dtype=grad.dtype, device=grad.device))
        return value, [grad, None]

    return kernel


def _check_target(name: str, target: Tensor, lead: torch.Size) -> Tensor:
    if tuple(target.shape) != tuple(lead):
        raise ValueError(f"{name}: target {tuple(target.shape)} must equal the positions' shape {tuple(lead)}")
    return target.unsqueeze(-1)


def token_cross_entropy(logits: Tensor, target: Tensor, mask: Optional[Tensor] = None, *,
                        num_valid: Optional[Number] = None, chunk_size: Optional[int] = None) -> Tensor:
    """``Σ_counted −log softmax(z)[y] / N`` over ``logits [..., V]`` and ``target [...]``, chunked like
    :func:`token_divergence` (only ``chunk_size`` rows are upcast to fp32 at a time). ``target`` must be a
    valid id at every counted position."""
    name = "token_cross_entropy"
    chunk = _check_chunk_size(chunk_size, logits.shape[-1])
    y = _check_target(name, target, logits.shape[:-1])
    rows = _counted_rows(mask, logits.shape[:-1], logits.device, name)
    count = logits.shape[:-1].numel() if rows is None else rows.numel()
    dtype = _float_dtype(logits)
    scale = _scale(count, num_valid, 1.0, dtype, logits.device)
    return _ChunkedRows.apply(_ce_kernel(dtype), rows, chunk, scale, dtype, logits, y)


def token_cross_entropy_fused(hidden: Tensor, lm_head_weight: Tensor, target: Tensor,
                              mask: Optional[Tensor] = None, *, lm_head_bias: Optional[Tensor] = None,
                              num_valid: Optional[Number] = None, chunk_size: Optional[int] = None) -> Tensor:
    """:func:`token_cross_entropy` of ``hidden @ lm_head_weightᵀ (+ bias)`` without the full logits
    (fused like :func:`token_divergence_fused`)."""
    name = "token_cross_entropy_fused"
    _check_head(name, hidden, lm_head_weight, lm_head_bias, target.shape)
    chunk = _check_chunk_size(chunk_size, lm_head_weight.shape[0], fused=True)
    y = target.unsqueeze(-1)
    rows = _counted_rows(mask, hidden.shape[:-1], hidden.device, name)
    count = hidden.shape[:-1].numel() if rows is None else rows.numel()
    dtype = _float_dtype(hidden, lm_head_weight)
    scale = _scale(count, num_valid, 1.0, dtype, hidden.device)
    return _FusedHead.apply(_ce_kernel(dtype), rows, chunk, scale, dtype, hidden, lm_head_weight, lm_head_bias, y)
