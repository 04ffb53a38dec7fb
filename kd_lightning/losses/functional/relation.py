"""Relation-based distillation losses: compare how samples relate to each other, not the features.

Inputs are embeddings of any shape with the batch first (flattened to ``[B, D]``); student and teacher
widths may differ because only batch-by-batch relations are compared. All functions compute in fp32
(float64 stays float64 for gradient checks) and return a scalar.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .feature import _check_batch, _fp32

__all__ = ["cc_loss", "crd_nce_loss", "pairwise_distances", "pkt_loss", "rkd_loss", "rkd_terms"]


def _flat(x: Tensor) -> Tensor:
    return _fp32(x).flatten(1)


# ------------------------------------------------------------------------------------------ RKD
def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix ``[B, B]`` with an exact zero diagonal (no gradient through it)."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (e @ e.t())).clamp_min(eps)
    off = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return torch.where(off, d2.sqrt(), torch.zeros_like(d2))


def _normalized_distances(e: Tensor) -> Tensor:
    d = pairwise_distances(e)
    positive = d[d > 0]
    if positive.numel() == 0:  # a batch of one sample, or identical samples
        return d
    return d / positive.mean()


def _angles(e: Tensor) -> Tensor:
    # u[i, j] = normalize(e_j - e_i); angles[i, j, k] = u_ij · u_ik (zero whenever j == i or k == i)
    u = F.normalize(e[None, :, :] - e[:, None, :], p=2.0, dim=2)
    return torch.bmm(u, u.transpose(1, 2)).flatten()


def rkd_terms(student_embedding: Tensor, teacher_embedding: Tensor) -> Tuple[Tensor, Tensor]:
    """Relational KD (Park et al., CVPR 2019): the ``(distance, angle)`` terms, unweighted.

    With ``e = flatten(f)``: *distance* — pairwise Euclidean distances (zero diagonal), each matrix
    divided by the mean of its positive entries, Smooth-L1 (β=1) averaged over all B² entries;
    *angle* — ``u_ij = normalize(e_j - e_i)``, ``angle_ijk = u_ij · u_ik`` over all (i, j, k),
    Smooth-L1 averaged over all B³ entries. The teacher side is computed without gradient.
    """
    _check_batch(student_embedding, teacher_embedding, "rkd_terms")
    s, t = _flat(student_embedding), _flat(teacher_embedding)
    with torch.no_grad():
        t_dist = _normalized_distances(t)
        t_angle = _angles(t)
    distance = F.smooth_l1_loss(_normalized_distances(s), t_dist, beta=1.0)
    angle = F.smooth_l1_loss(_angles(s), t_angle, beta=1.0)
    return distance, angle


def rkd_loss(student_embedding: Tensor, teacher_embedding: Tensor,
             distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    """Relational KD (Park et al., CVPR 2019): ``distance_weight · distance + angle_weight · angle``.

    See :func:`rkd_terms` for the two terms; the published weights are 25 and 50.
    """
    distance, angle = rkd_terms(student_embedding, teacher_embedding)
    return distance_weight * distance + angle_weight * angle


# ------------------------------------------------------------------------------------------ PKT
def _cosine_probabilities(e: Tensor, eps: float) -> Tensor:
    e = e / (e.norm(p=2, dim=1, keepdim=True) + eps)
    e = torch.where(torch.isnan(e), torch.zeros_like(e), e)
    s = (e @ e.t() + 1.0) / 2.0
    return s / s.sum(dim=1, keepdim=True)


def pkt_loss(student_embedding: Tensor, teacher_embedding: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

    Rows are L2-normalized (``e / (‖e‖ + eps)``, NaN → 0); ``S = e eᵀ`` (cosine similarities) is mapped
    to ``(S + 1) / 2`` and each row divided by its sum, giving conditional probabilities ``P``;

    ``pkt = mean over all B² entries of P_t · log((P_t + eps) / (P_s + eps))``.
    """
    _check_batch(student_embedding, teacher_embedding, "pkt_loss")
    ps = _cosine_probabilities(_flat(student_embedding), eps)
    pt = _cosine_probabilities(_flat(teacher_embedding), eps)
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()


# ------------------------------------------------------------------------------------------- CC
def _correlation(e: Tensor, kernel: str, gamma: float, order: int) -> Tensor:
    e = F.normalize(e, p=2.0, dim=1)
    sim = e @ e.t()
    if kernel == "bilinear":
        return sim
    # exp(-γ‖a - b‖²) = exp(-2γ) · exp(2γ a·b) for unit vectors; Taylor-expand the second factor.
    corr = torch.zeros_like(sim)
    for p in range(order + 1):
        corr = corr + math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p) * sim.pow(p)
    return corr


def cc_loss(student_embedding: Tensor, teacher_embedding: Tensor, kernel: str = "gaussian",
            gamma: float = 0.4, order: int = 2) -> Tensor:
    """Correlation congruence (Peng et al., ICCV 2019): match the sample-correlation matrices.

    Embeddings are L2-normalized and a ``[B, B]`` correlation matrix ``ψ`` is built with

    - ``kernel="gaussian"`` (default, the paper's choice): the Gaussian RBF
      ``exp(-γ‖a - b‖²) = exp(-2γ) exp(2γ aᵀb)`` approximated by its P-order Taylor expansion
      ``Σ_{p=0}^{P} exp(-2γ) (2γ)^p / p! (aᵀb)^p`` (defaults γ=0.4, P=2);
    - ``kernel="bilinear"``: ``ψ_ij = aᵀb`` (cosine similarity).

    ``cc = ‖ψ_t - ψ_s‖²_F / B²`` (mean squared difference). Widths may differ. Note: the CIFAR table
    weight 0.02 was used with RepDistiller's variant (128-d linear embeddings, product of neighbouring
    absolute differences), whose scale differs from this paper form.
    """
    if kernel not in ("gaussian", "bilinear"):
        raise ValueError(f"cc_loss kernel must be 'gaussian' or 'bilinear', got {kernel!r}")
    if order < 0:
        raise ValueError(f"cc_loss order must be >= 0, got {order}")
    _check_batch(student_embedding, teacher_embedding, "cc_loss")
    cs = _correlation(_flat(student_embedding), kernel, gamma, order)
    ct = _correlation(_flat(teacher_embedding), kernel, gamma, order)
    return (ct - cs).pow(2).mean()


# ------------------------------------------------------------------------------------------ CRD
def crd_nce_loss(scores: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    """The NCE loss of contrastive representation distillation (Tian et al., ICLR 2020).

    ``scores`` ``[B, K+1]`` are the normalized unnormalized-probabilities ``exp(vᵀm / τ) / Z`` of the
    positive pair (column 0) and K negatives drawn uniformly from ``num_data`` samples (noise
    probability ``P_n = 1 / num_data``):

    ``loss = -(1/B) Σ_i [ log(P_0 / (P_0 + K P_n + eps)) + Σ_k log(K P_n / (P_k + K P_n + eps)) ]``.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"crd_nce_loss expects scores [batch, 1 + negatives], got {tuple(scores.shape)}")
    scores = _fp32(scores)
    k = scores.shape[1] - 1
    noise = k / float(num_data)
    pos = scores[:, 0]
    neg = scores[:, 1:]
    log_pos = torch.log(pos / (pos + noise + eps))
    log_neg = torch.log(noise / (neg + noise + eps))
    return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]
