"""Distillation through singular value decomposition of feature maps (KDSVD).

Lee, Kim & Song, "Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV 2018.
Each feature map is read as a matrix per sample and compressed to its leading right singular vectors
(scaled by the teacher's normalised singular values); the knowledge passed on is how the compressed
features of two consecutive stages relate, measured by a Gaussian (RBF) kernel between every pair of
entries. Computes in fp32 (float64 stays float64) and returns a scalar.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .feature import _fp32, match_spatial

__all__ = ["kdsvd_loss", "feature_singular_vectors"]

KDSVD_VIEWS = ("positions", "channels")


def _as_matrix(feature: Tensor, over: str) -> Tensor:
    """``[B, C, *spatial]`` as a batch of matrices whose right singular vectors live in the ``over`` space."""
    if feature.ndim < 3:
        raise ValueError(f"kdsvd_loss needs feature maps [batch, channels, *spatial], got shape {tuple(feature.shape)}")
    x = _fp32(feature).flatten(2)  # [B, C, N]
    return x if over == "positions" else x.transpose(1, 2)


def _nan_to_zero_grad(x: Tensor) -> Tensor:
    # The SVD's backward divides by gaps between singular values; where two coincide it is not finite,
    # and (as the authors' code does) such entries are dropped instead of poisoning the student.
    if x.requires_grad:
        x.register_hook(lambda g: torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0))
    return x


def feature_singular_vectors(feature: Tensor, k: int, over: str = "positions") -> Tuple[Tensor, Tensor]:
    """The ``k`` leading right singular vectors ``V`` (``[B, N, k]``, unit columns, each signed so that its
    largest-magnitude entry is positive) of each sample's matrix and the L2-normalised ``k`` leading singular
    values ``s`` (``[B, k]``); non-finite entries become 0."""
    x = _nan_to_zero_grad(_as_matrix(feature, over))
    k = min(k, *x.shape[1:])
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = torch.nan_to_num(vh[:, :k, :].transpose(1, 2))
    # A singular vector's sign is arbitrary (it differs between LAPACK builds); fix it so that each vector's
    # largest-magnitude entry is positive, which makes the relations between stages well defined.
    peak = torch.gather(v, 1, v.abs().argmax(dim=1, keepdim=True))
    v = v * torch.where(peak < 0, -1.0, 1.0).to(v.dtype)
    s = F.normalize(torch.nan_to_num(s[:, :k]), dim=1)
    return F.normalize(v, dim=1), s


def _align(student_v: Tensor, teacher_v: Tensor) -> Tensor:
    """For each teacher vector, the student vector most parallel to it (by |cosine|), sign-corrected."""
    cosine = student_v.transpose(1, 2) @ teacher_v  # [B, k_s, k_t]
    best = cosine.abs().argmax(dim=1)  # [B, k_t]
    sign = torch.gather(cosine, 1, best[:, None, :]).sign().squeeze(1)  # [B, k_t]
    picked = torch.gather(student_v, 2, best[:, None, :].expand(-1, student_v.shape[1], -1))
    return picked * sign[:, None, :]


def kdsvd_loss(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], k: int = 1,
               over: str = "positions", gamma: float = 8.0) -> Tensor:
    """KDSVD (Lee et al., ECCV 2018) over stages ``1..L`` given in order, shallow to deep.

    At each stage the teacher's map gives its ``k`` leading right singular vectors ``V_t`` and normalised
    singular values ``s_t``; the student's gives ``k + 3`` vectors, of which the one most parallel to each
    teacher vector is kept (sign aligned), ``V_s``. Both are scaled by ``s_t``: ``Ṽ = V · diag(s_t)``.
    Between consecutive stages ``l − 1`` and ``l`` the RBF relation
    ``R[b, i, j, m] = exp(−(Ṽ_l[b, i, m] − Ṽ_{l−1}[b, j, m])² / gamma)`` is formed for each network, and

    ``kdsvd = Σ_{l ≥ 2} (1/B) Σ (R_s − R_t)²``  (non-finite entries count 0; the teacher has no gradient).

    ``over="channels"`` is the paper's reading (each map a ``positions × channels`` matrix, so ``V`` lives in
    channel space and student and teacher widths must agree); ``over="positions"`` (default) reads the
    transpose, so ``V`` lives in position space and widths may differ (different spatial sizes are pooled
    to the smaller). ``gamma = 8`` and ``k = 1`` are the authors' values.
    """
    if over not in KDSVD_VIEWS:
        raise ValueError(f"kdsvd_loss: over must be one of {KDSVD_VIEWS}, got {over!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"kdsvd_loss: k (singular vectors kept) must be an integer >= 1, got {k!r}")
    if len(student_features) != len(teacher_features) or len(student_features) < 2:
        raise ValueError(f"kdsvd_loss relates consecutive stages: give the same number (>= 2) of student and "
                         f"teacher maps, got {len(student_features)} and {len(teacher_features)}")
    total: Optional[Tensor] = None
    previous: Optional[Tuple[Tensor, Tensor]] = None
    for fs, ft in zip(student_features, teacher_features):
        if over == "positions":
            fs, ft = match_spatial(fs, ft)
        elif fs.shape[1] != ft.shape[1]:
            raise ValueError(f"kdsvd_loss(over='channels') needs equal widths, got {fs.shape[1]} and {ft.shape[1]} "
                             "channels; use over='positions'")
        with torch.no_grad():
            vt, st = feature_singular_vectors(ft, k, over)
        vs, _ = feature_singular_vectors(fs, vt.shape[2] + 3, over)
        vs = _align(vs, vt) * st[:, None, :]
        vt = vt * st[:, None, :]
        if previous is not None:
            m = min(vs.shape[2], previous[0].shape[2])  # a small stage may hold fewer than k vectors
            ps, pt = previous[0][..., :m], previous[1][..., :m]
            vs_m, vt_m = vs[..., :m], vt[..., :m]
            rs = torch.exp(-(vs_m[:, :, None, :] - ps[:, None, :, :]).pow(2) / gamma)
            rt = torch.exp(-(vt_m[:, :, None, :] - pt[:, None, :, :]).pow(2) / gamma)
            sq = (rs - rt).pow(2)
            term = torch.where(torch.isfinite(sq), sq, torch.zeros_like(sq)).sum() / fs.shape[0]
            total = term if total is None else total + term
        previous = (vs, vt)
    return total  # type: ignore[return-value]
