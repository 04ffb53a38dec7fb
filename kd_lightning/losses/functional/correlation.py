"""Channel-by-channel correlation matrices of feature maps and the losses that match them (FSP, ICKD).

A map ``[B, C, *spatial]`` is read as C vectors of N = ∏spatial positions per sample, so 1-D sequences
``[B, C, L]`` and 2-D images are treated alike (a vector ``[B, D]`` is D channels at one position). Only the
channel counts must agree between student and teacher: the matrices are ``C × C'`` whatever the spatial
size. Computed in fp32 (float64 stays float64).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .feature import _check_batch, _fp32, match_spatial

__all__ = ["fsp_matrix", "fsp_loss", "channel_correlation", "ickd_loss"]


def _positions(x: Tensor) -> Tensor:
    """``[B, C, *spatial]`` -> ``[B, C, N]``; a vector ``[B, D]`` becomes ``[B, D, 1]``."""
    return x.reshape(x.shape[0], x.shape[1], -1)


# ------------------------------------------------------------------------------------------ FSP
def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """The flow of solution procedure of Yim et al. (CVPR 2017): ``G[i, j] = (1/N) Σ_x f1[i, x] · f2[j, x]``.

    ``first`` ``[B, C1, *spatial]`` and ``second`` ``[B, C2, *spatial]`` are two layers' outputs (typically a
    stage's input and output); the result is ``[B, C1, C2]``. If their spatial sizes differ, the larger is
    adaptive-average-pooled to the smaller one (as RepDistiller does; the paper pairs layers of one size).
    """
    _check_batch(first, second, "fsp_matrix")
    a, b = match_spatial(_fp32(first), _fp32(second))
    a, b = _positions(a), _positions(b)
    return torch.bmm(a, b.transpose(1, 2)) / a.shape[2]


def fsp_loss(student_first: Tensor, student_second: Tensor, teacher_first: Tensor, teacher_second: Tensor,
             mode: str = "code") -> Tensor:
    """FSP matching (Yim, Joo, Bae & Kim, CVPR 2017, "A Gift from Knowledge Distillation: Fast Optimization,
    Network Minimization and Transfer Learning").

    With ``G_s = fsp_matrix(student_first, student_second)`` and ``G_t`` the teacher's:

    - ``mode="paper"`` (the paper's equation, one layer pair): ``fsp = (1/B) Σ_i ‖G_t,i − G_s,i‖²_F``;
    - ``mode="code"`` (RepDistiller, whose CIFAR weight 50 belongs to it; default):
      ``fsp = mean over all B·C1·C2 elements of (G_t − G_s)²``, the paper's value divided by C1·C2.

    The matrices must have the same shape: FSP needs equal channel counts at both ends (the
    :class:`~kd_lightning.losses.FSP` module adds 1×1 connectors to the student where they differ).
    torchdistill's ``FSPLoss`` departs from both (an unsquared norm over one axis of G); we follow the paper.
    """
    if mode not in ("code", "paper"):
        raise ValueError(f"fsp_loss mode must be 'code' (RepDistiller) or 'paper', got {mode!r}")
    gs = fsp_matrix(student_first, student_second)
    gt = fsp_matrix(teacher_first, teacher_second)
    if gs.shape != gt.shape:
        raise ValueError(f"fsp_loss: the student FSP matrix is {tuple(gs.shape[1:])} and the teacher's "
                         f"{tuple(gt.shape[1:])}; FSP needs equal channel counts (connect the student first)")
    sq = (gt - gs).pow(2)
    return sq.mean() if mode == "code" else sq.flatten(1).sum(1).mean()


# ----------------------------------------------------------------------------------------- ICKD
def channel_correlation(feature: Tensor) -> Tensor:
    """ICKD's inter-channel correlation: ``G = F Fᵀ`` per sample (``[B, C, C]``), each row L2-normalised."""
    f = _positions(_fp32(feature))
    return F.normalize(torch.bmm(f, f.transpose(1, 2)), dim=2)


def ickd_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Inter-channel correlation (Liu et al., ICCV 2021, "Exploring Inter-Channel Correlation for
    Diversity-Preserved Knowledge Distillation").

    With ``Ĝ = channel_correlation(f)`` (a C × C matrix of channel inner products over positions, rows
    L2-normalised) and the student's feature already embedded to the teacher's C channels::

        ickd = (1/(B·C)) Σ_i ‖Ĝ_s,i − Ĝ_t,i‖²_F

    the authors' CIFAR code. torchdistill's ``ChSimLoss`` (a port of the authors' ImageNet code) divides by
    B once more (``B²·C``). The spatial sizes may differ: the matrices are C × C either way.
    """
    _check_batch(student_feature, teacher_feature, "ickd_loss")
    if student_feature.shape[1] != teacher_feature.shape[1]:
        raise ValueError(f"ickd_loss: student has {student_feature.shape[1]} channels and teacher "
                         f"{teacher_feature.shape[1]}; ICKD's embedding maps the student to the teacher's width")
    gs, gt = channel_correlation(student_feature), channel_correlation(teacher_feature)
    b, c = gs.shape[0], gs.shape[1]
    return (gs - gt).pow(2).sum() / (b * c)
