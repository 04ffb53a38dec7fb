"""Response-based (logit) distillation losses as pure tensor functions.

Notation (the formulas are written out in the documentation, ``docs/methods.md``): ``z_s``, ``z_t`` are student / teacher logits of shape ``[B, C]``,
``p = softmax(z / T)``, ``KL(a‖b) = Σ_c a_c (log a_c − log b_c)`` and "mean over the batch" is the sum
over samples divided by ``B``.

Every function works in at least fp32: bf16 / fp16 inputs are upcast with ``.float()`` before any
arithmetic, float64 inputs stay float64 (so ``torch.autograd.gradcheck`` can be used). Probabilities are
only ever handled through ``log_softmax`` / ``logsumexp``, which keeps the losses finite for logits in
the hundreds and thousands of classes.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..checks import check_temperature

__all__ = [
    "kd_loss",
    "kd_ce_terms",
    "logit_standardize",
    "dkd_loss",
    "dkd_terms",
    "dist_loss",
    "dist_terms",
    "logit_mse",
    "dist_plus_loss",
    "dist_plus_feature_terms",
    "skd_instance_loss",
    "skd_direction_loss",
    "SKD_MODES",
    "ctkd_kd_loss",
    "gradient_reversal",
    "ctkd_lambda",
]

_DIVERGENCES = ("forward", "reverse", "js")


# ------------------------------------------------------------------------------------------ helpers
def _upcast(*tensors: Tensor) -> Tuple[Tensor, ...]:
    """Bring all inputs to a common dtype that is at least fp32 (float64 is kept)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype != torch.float64:
        return tuple(t.float() for t in tensors)
    return tuple(t.to(dtype) for t in tensors)


def _check_logit_pair(student_logits: Tensor, teacher_logits: Tensor, name: str) -> None:
    if student_logits.ndim != 2 or teacher_logits.ndim != 2:
        raise ValueError(
            f"{name} expects logits shaped [batch, classes]; got student {tuple(student_logits.shape)} "
            f"and teacher {tuple(teacher_logits.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{name}: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape")


def _kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row ``KL(p‖q) = Σ p (log p − log q)`` from log-probabilities; returns shape ``[B]``.

    Where ``p`` underflows to 0 the finite ``log p − log q`` is multiplied by 0, so no NaN appears.
    """
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


# --------------------------------------------------------------------------------------- standardize
def logit_standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardization, ``Z(z) = (z − mean(z)) / (std(z) + eps)`` per sample over the classes.

    ``std`` is the unbiased estimator (divide by ``C − 1``). From Sun et al., "Logit Standardization in
    Knowledge Distillation", CVPR 2024. Needs at least two classes. Returns fp32 (or float64).
    """
    (z,) = _upcast(logits)
    if z.shape[-1] < 2:
        raise ValueError(f"logit_standardize needs at least 2 classes, got shape {tuple(z.shape)}")
    mean = z.mean(dim=-1, keepdim=True)
    std = z.std(dim=-1, keepdim=True, unbiased=True)
    return (z - mean) / (std + eps)


# ---------------------------------------------------------------------------------------------- KD
def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0,
            divergence: str = "forward", standardize: bool = False) -> Tensor:
    """Soft-target distillation loss of Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

    With ``p_s = softmax(z_s / T)`` and ``p_t = softmax(z_t / T)``:

    * ``divergence="forward"`` (the paper): ``T² · (1/B) Σ_i KL(p_t,i ‖ p_s,i)``
    * ``divergence="reverse"``: ``T² · (1/B) Σ_i KL(p_s,i ‖ p_t,i)``
    * ``divergence="js"`` (Jensen–Shannon): ``T² · (1/B) Σ_i ½ [KL(p_s,i ‖ m_i) + KL(p_t,i ‖ m_i)]``
      with ``m = (p_s + p_t) / 2``.

    ``standardize=True`` replaces both logit vectors by :func:`logit_standardize` before dividing by
    ``T`` (Sun et al., CVPR 2024); the ``T²`` factor is kept. Returns a scalar in fp32 (float64 for
    float64 inputs).
    """
    temperature = check_temperature(temperature)
    if divergence not in _DIVERGENCES:
        raise ValueError(f"divergence must be one of {_DIVERGENCES}, got {divergence!r}")
    _check_logit_pair(student_logits, teacher_logits, "kd_loss")
    zs, zt = _upcast(student_logits, teacher_logits)
    if standardize:
        zs, zt = logit_standardize(zs), logit_standardize(zt)
    if divergence == "forward" and not zt.requires_grad:
        return _ForwardKL.apply(zs, zt, temperature)
    log_ps = F.log_softmax(zs / temperature, dim=-1)
    log_pt = F.log_softmax(zt / temperature, dim=-1)
    if divergence == "forward":
        per_sample = _kl_from_log_probs(log_pt, log_ps)
    elif divergence == "reverse":
        per_sample = _kl_from_log_probs(log_ps, log_pt)
    else:
        # log m = log((p_s + p_t) / 2), computed without leaving log space.
        log_m = torch.logaddexp(log_ps, log_pt) - math.log(2.0)
        per_sample = 0.5 * (_kl_from_log_probs(log_ps, log_m) + _kl_from_log_probs(log_pt, log_m))
    return per_sample.sum() / zs.shape[0] * temperature ** 2


def _forward_kl_parts(zs: Tensor, zt: Tensor, temperature: float) -> Tuple[Tensor, Tensor, Tensor]:
    """``(T² · (1/B) Σ_i KL(p_t,i ‖ p_s,i), log p_s, p_t)``, computed without autograd for the Functions below."""
    log_ps = torch.log_softmax(zs / temperature if temperature != 1.0 else zs, dim=-1)
    log_pt = torch.log_softmax(zt / temperature if temperature != 1.0 else zt, dim=-1)
    pt = log_pt.exp()
    # Σ p_t (log p_t − log p_s) as one dot product; p_t = 0 contributes 0, never NaN.
    kd = torch.dot(pt.reshape(-1), (log_pt - log_ps).reshape(-1)) * (temperature ** 2 / zs.shape[0])
    return kd, log_ps, pt


def _forward_kl_grad(log_ps: Tensor, pt: Tensor, scale: float) -> Tensor:
    """``scale · (p_s − p_t)``: the gradient of the KD term with ``scale = weight · T / B``."""
    return torch.sub(log_ps.exp(), pt).mul_(scale)


class _ForwardKL(torch.autograd.Function):
    """``T² · (1/B) Σ_i KL(p_t,i ‖ p_s,i)`` for a teacher without gradient, with the gradient written out:
    ``∂/∂z_s = (T/B) (p_s − p_t)``. The same value as the composite form in :func:`kd_loss`, in about
    half the operations and autograd nodes; on small models the loss is a visible part of a step.
    Not twice differentiable (``once_differentiable`` says so instead of returning a wrong answer)."""

    @staticmethod
    def forward(ctx: Any, zs: Tensor, zt: Tensor, temperature: float) -> Tensor:
        kd, log_ps, pt = _forward_kl_parts(zs, zt, temperature)
        ctx.save_for_backward(log_ps, pt)
        ctx.scale = temperature / zs.shape[0]
        return kd

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None, None]:
        log_ps, pt = ctx.saved_tensors
        return _forward_kl_grad(log_ps, pt, ctx.scale).mul_(grad), None, None


def kd_ce_terms(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, labeled: Optional[Tensor] = None,
                temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9) -> Tuple[Tensor, Tensor, Tensor]:
    """Hinton et al.'s whole loss in one autograd node: ``(loss, ce, kd)`` with
    ``loss = ce_weight · ce + kd_weight · kd``, ``kd`` the forward :func:`kd_loss` and ``ce`` the mean
    cross-entropy over the samples with ``labeled`` True (all when ``labeled`` is None; 0 when none are).

    Equal to composing :func:`kd_loss` with ``F.cross_entropy``, with the gradient written out,
    ``∂loss/∂z_s = kd_weight · (T/B)(p_s^T − p_t^T) + ce_weight · m (p_s − onehot(y)) / Σm``: on a small model
    the two losses' many tiny operations are a visible part of a training step, and this halves them.
    The teacher gets no gradient; ``ce`` and ``kd`` are returned detached (for logging).
    """
    temperature = check_temperature(temperature)
    _check_logit_pair(student_logits, teacher_logits, "kd_ce_terms")
    zs, zt = _upcast(student_logits, teacher_logits)
    return _KDCE.apply(zs, zt.detach(), target, labeled, temperature, float(ce_weight), float(kd_weight))


class _KDCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, zs: Tensor, zt: Tensor, target: Tensor, labeled: Optional[Tensor], temperature: float,
                ce_weight: float, kd_weight: float) -> Tuple[Tensor, Tensor, Tensor]:
        b = zs.shape[0]
        kd, log_ps, pt = _forward_kl_parts(zs, zt, temperature)
        log_p1 = log_ps if temperature == 1.0 else torch.log_softmax(zs, dim=-1)
        target = target.long()
        if labeled is None:
            row_weight: Any = ce_weight / b
            ce = F.nll_loss(log_p1, target, reduction="mean")
        else:
            # Labeled rows weigh 1/n, the others 0 (their target is clamped to a valid class, then zeroed).
            row_weight = labeled.to(zs.dtype) / labeled.sum().clamp_min(1)
            ce = -torch.dot(log_p1.gather(1, target.clamp_min(0)[:, None]).reshape(-1), row_weight)
            row_weight = row_weight[:, None] * ce_weight
            target = target.clamp_min(0)
        loss = torch.add(kd * kd_weight, ce, alpha=ce_weight)
        ctx.save_for_backward(log_ps, pt, log_p1, target, row_weight if isinstance(row_weight, Tensor) else None)
        ctx.scale = kd_weight * temperature / b
        ctx.row_weight = None if isinstance(row_weight, Tensor) else row_weight
        ctx.mark_non_differentiable(ce, kd)
        return loss, ce, kd

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor, _ce: Any, _kd: Any) -> tuple:
        log_ps, pt, log_p1, target, row_weight = ctx.saved_tensors
        g_kd = _forward_kl_grad(log_ps, pt, ctx.scale)
        # softmax − onehot, row-weighted
        g_ce = log_p1.exp().scatter_add_(1, target[:, None], torch.full_like(pt[:, :1], -1.0))
        g_ce.mul_(row_weight if row_weight is not None else ctx.row_weight)
        return g_kd.add_(g_ce).mul_(grad), None, None, None, None, None, None


# --------------------------------------------------------------------------------------------- DKD
def _binary_and_non_target(logits: Tensor, target: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """Log of ``b = [p_y, 1 − p_y]`` (full softmax at T) and log of the non-target softmax at T.

    ``1 − p_y`` is obtained as ``logsumexp`` of the non-target log-probabilities, so it never suffers
    from cancellation; the non-target distribution is a softmax over the ``C − 1`` gathered logits.
    """
    b, c = logits.shape
    scaled = logits / temperature
    log_p = F.log_softmax(scaled, dim=-1)
    keep = torch.ones_like(scaled, dtype=torch.bool)
    keep.scatter_(1, target.view(-1, 1), False)
    log_p_target = log_p.gather(1, target.view(-1, 1))
    log_p_rest = torch.logsumexp(log_p[keep].view(b, c - 1), dim=-1, keepdim=True)
    log_binary = torch.cat([log_p_target, log_p_rest], dim=-1)
    log_non_target = F.log_softmax(scaled[keep].view(b, c - 1), dim=-1)
    return log_binary, log_non_target


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, target: Tensor,
              temperature: float = 4.0) -> Tuple[Tensor, Tensor]:
    """The two parts of Decoupled KD, ``(TCKD, NCKD)`` (Zhao et al., CVPR 2022).

    Per sample, ``b = [p_y, 1 − p_y]`` from the full softmax at T and ``p̂`` the softmax of ``z / T``
    over the non-target classes only:

    * ``TCKD = T² · (1/B) Σ_i KL(b_t,i ‖ b_s,i)``
    * ``NCKD = T² · (1/B) Σ_i KL(p̂_t,i ‖ p̂_s,i)``
    """
    temperature = check_temperature(temperature)
    _check_logit_pair(student_logits, teacher_logits, "dkd_loss")
    if student_logits.shape[-1] < 2:
        raise ValueError("dkd_loss needs at least 2 classes")
    if target.shape != student_logits.shape[:1]:
        raise ValueError(f"dkd_loss: target must have shape [{student_logits.shape[0]}], got {tuple(target.shape)}")
    zs, zt = _upcast(student_logits, teacher_logits)
    target = target.long()
    bin_s, rest_s = _binary_and_non_target(zs, target, temperature)
    bin_t, rest_t = _binary_and_non_target(zt, target, temperature)
    scale = temperature ** 2 / zs.shape[0]
    tckd = _kl_from_log_probs(bin_t, bin_s).sum() * scale
    nckd = _kl_from_log_probs(rest_t, rest_s).sum() * scale
    return tckd, nckd


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, alpha: float = 1.0,
             beta: float = 8.0, temperature: float = 4.0) -> Tensor:
    """Decoupled Knowledge Distillation, ``alpha · TCKD + beta · NCKD`` (Zhao et al., CVPR 2022).

    See :func:`dkd_terms` for the two parts. With ``alpha = beta = 1`` the sample-wise identity of the
    paper, ``KL(p_t‖p_s) = KL(b_t‖b_s) + (1 − p_t,y) · KL(p̂_t‖p̂_s)``, links it to :func:`kd_loss`.
    The published recipe's warm-up (``min(epoch / 20, 1)``) belongs to the loss, not here.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


# -------------------------------------------------------------------------------------------- DIST
def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise Pearson correlation: cosine of the centred rows, ``a·b / (‖a‖‖b‖ + eps)``."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    return (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor,
               temperature: float = 1.0) -> Tuple[Tensor, Tensor]:
    """The two relations of DIST, ``(inter, intra)`` (Huang et al., "Knowledge Distillation from A Stronger
    Teacher", NeurIPS 2022).

    With ``y = softmax(z / τ)`` and ``ρ(a, b) = (a − ā)·(b − b̄) / (‖a − ā‖ ‖b − b̄‖ + 1e-8)``:

    * ``inter = τ² · (1 − mean_i ρ(y_s[i, :], y_t[i, :]))`` (over the classes of each sample)
    * ``intra = τ² · (1 − mean_c ρ(y_s[:, c], y_t[:, c]))`` (over the batch, for each class)
    """
    temperature = check_temperature(temperature)
    _check_logit_pair(student_logits, teacher_logits, "dist_loss")
    zs, zt = _upcast(student_logits, teacher_logits)
    ys = F.softmax(zs / temperature, dim=-1)
    yt = F.softmax(zt / temperature, dim=-1)
    t2 = temperature ** 2
    inter = t2 * (1.0 - _pearson_rows(ys, yt).mean())
    intra = t2 * (1.0 - _pearson_rows(ys.t(), yt.t()).mean())
    return inter, intra


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 1.0) -> Tensor:
    """DIST, ``beta · inter + gamma · intra`` (Huang et al., NeurIPS 2022); see :func:`dist_terms`.

    CIFAR recipe: ``τ = 4``, ``beta = gamma = 1``, loss ``CE + 2 · dist``; ImageNet ``τ = 1``.
    """
    inter, intra = dist_terms(student_logits, teacher_logits, temperature)
    return beta * inter + gamma * intra


def _pearson_channels(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation over dim 1 (the channels) at every other index of ``[B, C, ...]`` maps."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_plus_feature_terms(student_feature: Tensor, teacher_feature: Tensor,
                            eps: float = 1e-8) -> Tuple[Tensor, Tensor]:
    """The feature-level relations of DIST+, ``(channel, spatial)`` (Huang et al., "DIST+: Knowledge
    Distillation From a Stronger Adaptive Teacher", TPAMI 2025), on maps ``[B, C, *spatial]`` of equal shape.

    With ``ρ`` the Pearson correlation (as in :func:`dist_terms`):

    * ``channel = 1 − mean_{i, x} ρ(f_s[i, :, x], f_t[i, :, x])``: at each sample and position, the
      correlation of the two channel vectors;
    * ``spatial = 1 − mean_x ρ(a_s[:, x], a_t[:, x])`` with ``a = Σ_c f[:, c]`` flattened to ``[B, HW]``:
      at each position, the correlation over the batch of the channel-summed activations.

    Both are DIST's relational match lifted from class scores to features: only the relations have to
    agree, not the magnitudes. Vectors ``[B, C]`` have one position (their spatial term is over the batch).
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(f"dist_plus_feature_terms needs maps of equal shape (project the student first), got "
                         f"{tuple(student_feature.shape)} and {tuple(teacher_feature.shape)}")
    fs, ft = _upcast(student_feature, teacher_feature)
    fs, ft = fs.reshape(fs.shape[0], fs.shape[1], -1), ft.reshape(ft.shape[0], ft.shape[1], -1)
    channel = 1.0 - _pearson_channels(fs, ft, eps).mean()
    spatial = 1.0 - _pearson_rows(fs.sum(dim=1).t(), ft.sum(dim=1).t(), eps).mean()
    return channel, spatial


def dist_plus_loss(student_logits: Tensor, teacher_logits: Tensor, student_feature: Tensor, teacher_feature: Tensor,
                   beta: float = 1.0, gamma: float = 1.0, iota: float = 1.0, kappa: float = 1.0,
                   temperature: float = 1.0) -> Tensor:
    """DIST+ (Huang et al., TPAMI 2025): DIST on the logits plus its relational match on features,

    ``beta · inter + gamma · intra + iota · channel + kappa · spatial``

    (:func:`dist_terms` and :func:`dist_plus_feature_terms`). The paper's other addition, teacher
    acclimation, changes how the teacher is trained and is not a term of this loss.
    """
    inter, intra = dist_terms(student_logits, teacher_logits, temperature)
    channel, spatial = dist_plus_feature_terms(student_feature, teacher_feature)
    return beta * inter + gamma * intra + iota * channel + kappa * spatial


# --------------------------------------------------------------------------------------------- SKD
SKD_MODES = ("paper", "code")


def _check_skd_mode(mode: str) -> None:
    if mode not in SKD_MODES:
        raise ValueError(f"SKD mode must be 'paper' (the paper's equations) or 'code' (the authors' code), got {mode!r}")


def _below_median(values: Tensor) -> Tensor:
    """1.0 where a value is at most the median of ``values`` (linear interpolation, as numpy's percentile)."""
    return (values <= torch.quantile(values, 0.5)).to(values.dtype)


def skd_instance_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0,
                      mode: str = "paper") -> Tensor:
    """SKD's instance term (Jeong et al., "Streamlined Knowledge Distillation", CVPR 2026).

    * ``mode="paper"`` (Eq. 1): ``(1/B) Σ_i KL(softmax(z_t,i / τ) ‖ softmax(z_s,i / τ))``, no ``τ²``;
    * ``mode="code"`` (the authors' code): ``(1/B) Σ_i m_i · τ² · KL_i`` with ``m_i = 1`` for the samples whose
      teacher confidence ``max softmax(z_t,i)`` is at most the batch median (the harder half), else 0.
    """
    _check_skd_mode(mode)
    temperature = check_temperature(temperature)
    if mode == "paper":
        return kd_loss(student_logits, teacher_logits, temperature) / temperature ** 2
    _check_logit_pair(student_logits, teacher_logits, "skd_instance_loss")
    zs, zt = _upcast(student_logits, teacher_logits)
    per_sample = _kl_from_log_probs(F.log_softmax(zt / temperature, dim=-1), F.log_softmax(zs / temperature, dim=-1))
    mask = _below_median(F.softmax(zt.detach(), dim=-1).amax(dim=-1))
    return (per_sample * temperature ** 2 * mask).mean()


def skd_direction_loss(student_logits: Tensor, teacher_logits: Tensor, tikhonov: float = 0.1,
                       mode: str = "paper") -> Tensor:
    """SKD's direction term (Jeong et al., CVPR 2026): a Mahalanobis distance between Gram matrices.

    ``G = n(z) n(z)ᵀ / g`` (``[B, B]``) with ``n`` the row-wise L2 normalisation of the logits, ``D = G_s − G_t``;
    ``Σ`` is the covariance of ``D``'s columns estimated over its rows (unbiased), ``Σ' = Σ + λ I`` (Tikhonov),
    and ``d = (1/B) Σ_i sqrt(D_iᵀ Σ'⁻¹ D_i)``. It compares the angles between the samples' logit vectors,
    not their lengths. Needs a batch of at least 2.

    * ``mode="paper"`` (Eqs. 3-8): ``g = 1``, the loss is ``d``;
    * ``mode="code"`` (the authors' code): ``g = C`` (the class count), and ``d`` is multiplied by the share of
      classes whose summed teacher probability over the batch is at most the median (about one half).
    """
    _check_skd_mode(mode)
    if not isinstance(tikhonov, (int, float)) or not math.isfinite(tikhonov) or tikhonov <= 0:
        raise ValueError(f"skd_direction_loss: tikhonov must be a positive number (it makes Σ invertible), "
                         f"got {tikhonov!r}; the authors use 0.1")
    _check_logit_pair(student_logits, teacher_logits, "skd_direction_loss")
    if student_logits.shape[0] < 2:
        raise ValueError("skd_direction_loss needs a batch of at least 2 samples (a covariance over the batch)")
    zs, zt = _upcast(student_logits, teacher_logits)
    scale = zs.shape[1] if mode == "code" else 1
    ns, nt = F.normalize(zs, dim=1), F.normalize(zt, dim=1)
    diff = (ns @ ns.t() - nt @ nt.t()) / scale
    cov = torch.cov(diff.t()) + tikhonov * torch.eye(diff.shape[1], dtype=diff.dtype, device=diff.device)
    # Σ'⁻¹ D_iᵀ through a Cholesky solve: Σ' is symmetric positive definite thanks to λ > 0.
    solved = torch.cholesky_solve(diff.t(), torch.linalg.cholesky(cov)).t()
    distance = (diff * solved).sum(dim=1).clamp_min(0).sqrt().mean()
    if mode == "paper":
        return distance
    return distance * _below_median(F.softmax(zt.detach(), dim=-1).sum(dim=0)).mean()


# -------------------------------------------------------------------------------------------- CTKD
class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:
        return -ctx.strength * grad, None


def gradient_reversal(x: Tensor, strength: float) -> Tensor:
    """The identity going forward; the gradient times ``−strength`` going back (Ganin & Lempitsky 2015).

    CTKD puts it between the temperature and the loss, so the temperature ascends the loss the student
    descends.
    """
    return _GradientReversal.apply(x, float(strength))


def ctkd_lambda(epoch: float, ramp_epochs: float = 10.0, start: float = 0.0, end: float = 1.0) -> float:
    """CTKD's curriculum (Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI 2023):
    ``λ(e) = start + (end − start) · (1 − cos(π · min(e / E, 1))) / 2`` with ``E = ramp_epochs``, a cosine rise
    from ``start`` to ``end`` over the first ``E`` epochs, then ``end``. ``ramp_epochs=0`` gives ``end`` at once.
    """
    if ramp_epochs < 0:
        raise ValueError(f"ctkd_lambda: ramp_epochs must be >= 0, got {ramp_epochs!r}")
    progress = 1.0 if ramp_epochs == 0 else min(max(epoch / ramp_epochs, 0.0), 1.0)
    return start + (end - start) * (1.0 - math.cos(math.pi * progress)) / 2.0


def ctkd_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: Tensor) -> Tensor:
    """KD at a learned temperature (CTKD): ``(1/B) Σ_i T_i² · KL(softmax(z_t,i / T_i) ‖ softmax(z_s,i / T_i))``.

    ``temperature`` is a tensor that carries gradient: a scalar (one global T) or ``[B]`` (one per sample);
    with a scalar this equals :func:`kd_loss` at that value.
    """
    _check_logit_pair(student_logits, teacher_logits, "ctkd_kd_loss")
    zs, zt, t = _upcast(student_logits, teacher_logits, temperature)
    if t.ndim == 0:
        t = t.expand(zs.shape[0])
    if t.shape != (zs.shape[0],):
        raise ValueError(f"ctkd_kd_loss: temperature must be a scalar or one value per sample "
                         f"({zs.shape[0]}), got shape {tuple(temperature.shape)}")
    t = t.unsqueeze(1)
    per_sample = _kl_from_log_probs(F.log_softmax(zt / t, dim=-1), F.log_softmax(zs / t, dim=-1))
    return (per_sample * t.squeeze(1) ** 2).mean()


# --------------------------------------------------------------------------------------------- MSE
def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Logit regression of Ba & Caruana, "Do Deep Nets Really Need to be Deep?" (2014):
    ``mean over all B·C entries of (z_s − z_t)²``."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit_mse: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape")
    zs, zt = _upcast(student_logits, teacher_logits)
    return F.mse_loss(zs, zt, reduction="mean")


IGNORE_INDEX = -100  # the target of samples without a label, inside the loss functions


def hard_label_ce(logits: Tensor, target: Tensor, labeled: Optional[Tensor] = None, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy in fp32 over the samples that carry a label (all when ``labeled`` is None)."""
    logits = logits.float()
    if labeled is None:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    # A masked mean instead of boolean indexing: no data-dependent shape, so no device sync per step.
    # Unlabeled samples get the ignored class, which also drops them from the label-smoothing term.
    target = torch.where(labeled, target, IGNORE_INDEX)
    total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum",
                            label_smoothing=label_smoothing)
    return total / labeled.sum().clamp_min(1)
