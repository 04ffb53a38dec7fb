"""Feature-map distillation losses: pure functions over intermediate activations.

Feature maps are ``[batch, channels, *spatial]`` (any number of spatial dimensions, PyTorch's
convolution layout); vectors are ``[batch, dim]``. Every function computes in fp32 (half and bfloat16
inputs are promoted; float64 stays float64 so the functions can be gradient-checked) and returns a
scalar. Methods whose formula compares spatial positions (AT, NST, FitNet, VID, OFD) reconcile a spatial
size mismatch with :func:`match_spatial`: the larger map is adaptive-average-pooled down to the smaller
size, never upsampled.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "at_loss",
    "attention_map",
    "fitnet_loss",
    "match_spatial",
    "nst_loss",
    "ofd_loss",
    "ofd_margin_from_bn",
    "ofd_margin_from_samples",
    "sp_loss",
    "srd_loss",
    "vid_loss",
    "hidden_state_loss",
    "attention_map_loss",
]

_POOLS = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _fp32(x: Tensor) -> Tensor:
    """Promote reduced-precision tensors to fp32; leave fp32/fp64 alone."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_batch(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.ndim < 2 or teacher.ndim < 2:
        raise ValueError(f"{what} expects batch-first features with at least 2 dimensions, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{what}: student and teacher batch sizes differ "
                         f"({student.shape[0]} vs {teacher.shape[0]})")


def _as_map(x: Tensor, what: str) -> Tensor:
    """Feature maps pass through; a vector ``[B, D]`` becomes a one-channel map ``[B, 1, D]``."""
    if x.ndim == 2:
        return x[:, None, :]
    if x.ndim < 2 or x.ndim > 5:
        raise ValueError(f"{what} needs [batch, channels, *spatial] maps or [batch, dim] vectors; "
                         f"got shape {tuple(x.shape)}")
    return x


def _channel_view(v: Tensor, like: Tensor) -> Tensor:
    """Shape a per-channel vector ``[C]`` so it broadcasts over ``like`` = ``[B, C, *spatial]``."""
    return v.reshape((1, -1) + (1,) * (like.ndim - 2))


def match_spatial(student_feature: Tensor, teacher_feature: Tensor) -> Tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two maps so both share the smaller spatial size.

    Each spatial dimension is reduced to ``min(student, teacher)`` independently; maps of equal size are
    returned unchanged, and vectors (2-d) are returned as they are. Up to 3 spatial dimensions.
    """
    if student_feature.ndim != teacher_feature.ndim:
        raise ValueError(f"student and teacher features have different ranks: {tuple(student_feature.shape)} "
                         f"vs {tuple(teacher_feature.shape)}")
    if student_feature.ndim < 3 or student_feature.shape[2:] == teacher_feature.shape[2:]:
        return student_feature, teacher_feature
    nd = student_feature.ndim - 2
    if nd not in _POOLS:
        raise ValueError(f"cannot pool feature maps with {nd} spatial dimensions (1 to 3 supported)")
    size = tuple(min(a, b) for a, b in zip(student_feature.shape[2:], teacher_feature.shape[2:]))
    pool = _POOLS[nd]
    if tuple(student_feature.shape[2:]) != size:
        student_feature = pool(student_feature, size)
    if tuple(teacher_feature.shape[2:]) != size:
        teacher_feature = pool(teacher_feature, size)
    return student_feature, teacher_feature


# ------------------------------------------------------------------------------------------- AT
def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention of Zagoruyko & Komodakis: ``normalize(flatten(mean_c |f_c|^p))`` -> ``[B, HW]``."""
    feature = _as_map(_fp32(feature), "attention transfer")
    a = feature.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(a, p=2.0, dim=1)


def at_loss(student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0, mode: str = "code") -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention").

    With ``a(f) = L2-normalize(flatten(mean over channels of |f|^p))`` (``|f|^p = f^p`` for the
    default ``p=2``), per sample:

    - ``mode="code"`` (the authors' code and RepDistiller, default):
      ``at = mean over all B·HW elements of (a(f_s) - a(f_t))²``;
    - ``mode="paper"`` (the paper's equation): ``at = (1/B) Σ_i ‖a(f_s)_i - a(f_t)_i‖₂``.

    Works across channel widths (the channel mean removes them). When the spatial sizes differ, the larger
    map is adaptive-average-pooled to the smaller one *before* the attention map (:func:`match_spatial`).
    A vector feature ``[B, D]`` (an MLP layer) is read as a one-channel map of D positions, so the
    attention is the normalized squared activation pattern; differing widths D are then pooled too.
    """
    if mode not in ("code", "paper"):
        raise ValueError(f"at_loss mode must be 'code' or 'paper', got {mode!r}")
    _check_batch(student_feature, teacher_feature, "at_loss")
    s = _as_map(_fp32(student_feature), "attention transfer")
    t = _as_map(_fp32(teacher_feature), "attention transfer")
    s, t = match_spatial(s, t)
    diff = attention_map(s, p) - attention_map(t, p)
    if mode == "code":
        return diff.pow(2).mean()
    return diff.norm(p=2, dim=1).mean()


# ------------------------------------------------------------------------------------------- SP
def sp_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019).

    ``F = flatten(f)`` ``[B, ·]``, ``G = row-L2-normalize(F Fᵀ)`` ``[B, B]``,
    ``sp = ‖G_t - G_s‖²_F / B²``. Any shapes with a common batch size (widths and spatial sizes may
    differ, since only the B×B similarities are compared).
    """
    _check_batch(student_feature, teacher_feature, "sp_loss")
    fs = _fp32(student_feature).flatten(1)
    ft = _fp32(teacher_feature).flatten(1)
    b = fs.shape[0]
    gs = F.normalize(fs @ fs.t(), p=2.0, dim=1)
    gt = F.normalize(ft @ ft.t(), p=2.0, dim=1)
    return (gt - gs).pow(2).sum() / (b * b)


# ---------------------------------------------------------------------------------------- FitNet
def srd_loss(student_feature: Tensor, teacher_feature: Tensor, exponent: float = 4.0) -> Tensor:
    """SRD's feature distance (Miles & Mikolajczyk, "Understanding the Role of the Projector in Knowledge
    Distillation", AAAI 2024): ``log Σ |p(f_s) − n(f_t)|^α`` summed over the batch and every element.

    ``student_feature`` is the student's feature after its projector ``p`` (a linear map into the teacher's
    width followed by batch normalisation) and ``teacher_feature`` the teacher's after a parameter-free batch
    normalisation ``n``; the module (:class:`~kd_lightning.losses.SRD`) applies both. The logarithm makes
    the gradient scale-free, and ``α`` (4 in the authors' ImageNet recipe) weighs large differences most.
    """
    if not isinstance(exponent, (int, float)) or not math.isfinite(exponent) or exponent <= 0:
        raise ValueError(f"srd_loss: exponent must be a positive number, got {exponent!r}; the authors use 4")
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(f"srd_loss needs the projected student feature in the teacher's shape, got "
                         f"{tuple(student_feature.shape)} and {tuple(teacher_feature.shape)}")
    s, t = _fp32(student_feature), _fp32(teacher_feature)
    return (s - t).abs().pow(exponent).sum().log()


def fitnet_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al., ICLR 2015): ``MSE(r(f_s), f_t)``, mean over all elements.

    ``student_feature`` is the *regressed* student feature ``r(f_s)`` (the trainable regressor lives in
    :class:`kd_lightning.losses.FitNet`); its channels must equal the teacher's. Spatial sizes may differ
    (the larger map is pooled, :func:`match_spatial`).
    """
    _check_batch(student_feature, teacher_feature, "fitnet_loss")
    s, t = match_spatial(_fp32(student_feature), _fp32(teacher_feature))
    if s.shape != t.shape:
        raise ValueError(
            f"fitnet_loss needs the regressed student feature to match the teacher's shape; got "
            f"{tuple(s.shape)} vs {tuple(t.shape)}. Use the FitNet loss, which builds the regressor")
    return F.mse_loss(s, t)


# ------------------------------------------------------------------------------------------ NST
def _poly_kernel_mean(a: Tensor, b: Tensor, degree: int, c: float) -> Tensor:
    # a [B, Ca, N], b [B, Cb, N] -> mean over B, Ca, Cb of (a_i · b_j + c)^degree
    return (a @ b.transpose(1, 2) + c).pow(degree).mean()


def nst_loss(student_feature: Tensor, teacher_feature: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """Neuron selectivity transfer (Huang & Wang, 2017, "Like What You Like"), polynomial-kernel MMD².

    Each channel's activation map, flattened over space and L2-normalized, is one sample; per image
    the squared MMD between the student's and the teacher's channel distributions with the kernel
    ``k(x, y) = (xᵀy + c)^d`` (the authors' choice: d=2, c=0) is

    ``mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{j,i} k(s_j, t_i)``,

    averaged over the batch (the teacher-teacher term carries no gradient, as in the authors' code).
    Channel widths may differ; spatial sizes are matched by pooling the larger map. A vector ``[B, D]``
    is read as a one-channel map (then the MMD compares the two normalized activation patterns).
    """
    _check_batch(student_feature, teacher_feature, "nst_loss")
    s = _as_map(_fp32(student_feature), "NST")
    t = _as_map(_fp32(teacher_feature), "NST")
    s, t = match_spatial(s, t)
    s = F.normalize(s.flatten(2), p=2.0, dim=2)
    t = F.normalize(t.flatten(2), p=2.0, dim=2)
    with torch.no_grad():
        tt = _poly_kernel_mean(t, t, degree, c)
    return tt + _poly_kernel_mean(s, s, degree, c) - 2.0 * _poly_kernel_mean(s, t, degree, c)


# ------------------------------------------------------------------------------------------ VID
def vid_loss(predicted_mean: Tensor, teacher_feature: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """Variational information distillation (Ahn et al., CVPR 2019): Gaussian negative log-likelihood.

    The teacher feature is modelled as ``N(μ(f_s), σ²)`` with ``μ`` a trainable regressor of the student
    feature (``predicted_mean``) and a trainable per-channel variance ``σ² = softplus(log_scale) + eps``;

    ``vid = mean over all elements of ½ ((μ - f_t)² / σ² + log σ²)``

    (the authors' form without the constant ``½ log 2π``). ``log_scale`` has one entry per channel
    (dimension 1). Spatial sizes are matched by pooling the larger map.
    """
    _check_batch(predicted_mean, teacher_feature, "vid_loss")
    mu, t = match_spatial(_fp32(predicted_mean), _fp32(teacher_feature))
    if mu.shape != t.shape:
        raise ValueError(f"vid_loss: the predicted mean {tuple(mu.shape)} must match the teacher feature "
                         f"{tuple(t.shape)}")
    if log_scale.numel() != t.shape[1]:
        raise ValueError(f"vid_loss: log_scale has {log_scale.numel()} entries, the teacher {t.shape[1]} channels")
    var = _channel_view(F.softplus(_fp32(log_scale)) + eps, t)
    return (0.5 * ((mu - t).pow(2) / var + torch.log(var))).mean()


# ------------------------------------------------------------------------------------------ OFD
def ofd_loss(student_feature: Tensor, teacher_feature: Tensor, margin: Tensor) -> Tensor:
    """Overhaul of feature distillation (Heo et al., ICCV 2019): margin ReLU + partial L2.

    The teacher's pre-ReLU feature is transformed by the margin ReLU ``σ_m(t) = max(t, m)`` with the
    per-channel margin ``m = E[t | t < 0]`` (:func:`ofd_margin_from_bn`, :func:`ofd_margin_from_samples`);
    the partial L2 distance skips positions where both the target and the student are non-positive and
    the student is already below the target:

    ``ofd = (1/B) Σ_{positions} (s - σ_m(t))² · [s > σ_m(t) or σ_m(t) > 0]``

    i.e. the authors' per-sample sum (their training loop divides by the batch size and scales by
    α = 1/1000 on CIFAR, 1/10000 on ImageNet; that α is the loss's weight here).
    ``student_feature`` is the connector's output, with the teacher's channels.
    """
    _check_batch(student_feature, teacher_feature, "ofd_loss")
    s, t = match_spatial(_fp32(student_feature), _fp32(teacher_feature))
    if s.shape != t.shape:
        raise ValueError(f"ofd_loss: student {tuple(s.shape)} and teacher {tuple(t.shape)} shapes differ; "
                         "the OFD loss's connector maps the student to the teacher's channels")
    target = torch.maximum(t, _channel_view(_fp32(margin).to(t.dtype), t))
    mask = (s > target) | (target > 0)
    return ((s - target).pow(2) * mask.to(s.dtype)).sum() / s.shape[0]


def ofd_margin_from_bn(bn_weight: Tensor, bn_bias: Tensor, min_mass: float = 1e-3) -> Tensor:
    """Per-channel margin ``E[x | x < 0]`` for ``x ~ N(bias, weight²)``, the output of a BatchNorm.

    ``m = μ - σ φ(μ/σ) / Φ(-μ/σ)``; where ``Φ(-μ/σ) <= min_mass`` (almost no negative mass) the
    authors' fallback ``-3σ`` is used.
    """
    sigma = _fp32(bn_weight).abs().clamp_min(1e-12)
    mu = _fp32(bn_bias)
    z = mu / sigma
    mass = torch.special.ndtr(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    margin = mu - sigma * pdf / mass.clamp_min(1e-12)
    return torch.where(mass > min_mass, margin, -3.0 * sigma)


def ofd_margin_from_samples(teacher_feature: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel sum and count of the negative entries of a teacher feature ``[B, C, *spatial]``.

    ``sum / count`` is the empirical ``E[t | t < 0]``; the OFD loss accumulates both over batches,
    so its margin converges to the data set's expectation without a Gaussian assumption.
    """
    t = _fp32(teacher_feature).detach()
    dims = [0] + list(range(2, t.ndim))
    neg = t.clamp_max(0.0)
    return neg.sum(dim=dims), (t < 0).to(t.dtype).sum(dim=dims)


def hidden_state_loss(student_hidden: Tensor, teacher_hidden: Tensor, metric: str = "mse",
                      mask: Optional[Tensor] = None) -> Tensor:
    """Token-wise distance of transformer hidden states ``[B, T, H]`` (teacher without gradient).

    ``metric="mse"`` (TinyBERT, Jiao et al. 2020): the mean of ``(h_s − h_t)²`` over the counted tokens
    and the hidden size; the student side is usually projected to the teacher's width first (a learned
    linear map). ``metric="cosine"`` (DistilBERT, Sanh et al. 2019): the mean over counted tokens of
    ``1 − cos(h_s, h_t)``. ``mask`` ``[B, T]`` (True or 1 = counted, e.g. the attention mask) selects the
    tokens; all tokens count without it. An empty mask gives 0.
    """
    s, t = student_hidden.float(), teacher_hidden.detach().float()
    if s.shape != t.shape:
        raise ValueError(f"hidden_state_loss needs equal shapes (project the student first); got "
                         f"{tuple(s.shape)} and {tuple(t.shape)}")
    if metric == "mse":
        per_token = (s - t).pow(2).mean(-1)
    elif metric == "cosine":
        per_token = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    else:
        raise ValueError(f"metric must be 'mse' or 'cosine', got {metric!r}")
    if mask is None:
        return per_token.mean()
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


def attention_map_loss(student_attention: Tensor, teacher_attention: Tensor) -> Tensor:
    """TinyBERT's attention transfer (Jiao et al. 2020): MSE between attention maps ``[B, heads, T, T]``.

    The maps are the attention probabilities of one layer pair (a tap on a Hugging Face self-attention
    module's second output, ``"...attention.self:1"``, with eager attention); both need the same number of
    heads. Entries that are not finite (masked scores) count as 0, as in the authors' code.
    """
    s, t = student_attention.float(), teacher_attention.detach().float()
    if s.shape != t.shape:
        raise ValueError(f"attention_map_loss needs equal shapes (same heads and length); got "
                         f"{tuple(s.shape)} and {tuple(t.shape)}")
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
    t = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
    return F.mse_loss(s, t)
