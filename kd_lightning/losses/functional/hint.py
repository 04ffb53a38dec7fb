"""Hint losses that compare an *adapted* student feature with a teacher feature, position by position.

Each method's loss module owns the adapter (ReviewKD's fusion modules, FT's translator and paraphraser,
AB's connector); the functions here see only the tensors that come out of it. Maps are
``[batch, channels, *spatial]`` (1-D sequences ``[B, C, L]`` as well as 2-D images), vectors ``[batch, dim]``.
Like :mod:`~kd_lightning.losses.functional.feature`, everything is computed in fp32 (float64 stays float64)
and a spatial mismatch is resolved by average-pooling the larger map (:func:`match_spatial`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .feature import _POOLS, _check_batch, _fp32, match_spatial

__all__ = ["hcl_loss", "ft_loss", "ab_loss"]


# ------------------------------------------------------------------------------------- ReviewKD
def hcl_loss(student_feature: Tensor, teacher_feature: Tensor, levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """ReviewKD's hierarchical context loss of one stage (Chen et al., CVPR 2021, "Distilling Knowledge via
    Knowledge Review").

    With ``h`` the first spatial size of the map and ``pool_k`` adaptive average pooling to ``k`` along every
    spatial dimension::

        hcl = [MSE(f_s, f_t) + Σ_{k ∈ levels, k < h} w_k · MSE(pool_k f_s, pool_k f_t)] / (1 + Σ w_k)

    where the weights halve over the levels that are used, in order: ½, ¼, ⅛, … MSE is the mean over all
    elements. Levels as large as the map or larger are skipped (a 4×4 map is compared at full size, 2×2 and
    1×1). Vectors ``[B, D]`` have no context to pool: the loss is their MSE. ``f_s`` is the student's fused
    feature (after ReviewKD's attention-based fusion), already at the teacher's width.
    """
    _check_batch(student_feature, teacher_feature, "hcl_loss")
    s, t = match_spatial(_fp32(student_feature), _fp32(teacher_feature))
    if s.shape != t.shape:
        raise ValueError(f"hcl_loss compares features of one shape; got student {tuple(s.shape)} and teacher "
                         f"{tuple(t.shape)} (ReviewKD's fusion module maps the student to the teacher's width)")
    loss = F.mse_loss(s, t)
    if s.ndim < 3:
        return loss
    nd = s.ndim - 2
    if nd not in _POOLS:
        raise ValueError(f"hcl_loss pools maps with 1 to 3 spatial dimensions, got shape {tuple(s.shape)}")
    pool, h = _POOLS[nd], s.shape[2]
    weight, total = 1.0, 1.0
    for k in levels:
        if int(k) < 1:
            raise ValueError(f"hcl_loss levels must be positive pooled sizes, got {tuple(levels)}")
        if k >= h:
            continue
        weight /= 2.0
        size = (int(k),) * nd
        loss = loss + weight * F.mse_loss(pool(s, size), pool(t, size))
        total += weight
    return loss / total


# ------------------------------------------------------------------------------------------- FT
def ft_loss(student_factor: Tensor, teacher_factor: Tensor, p: float = 1.0, mode: str = "code") -> Tensor:
    """Factor transfer (Kim, Park & Kwak, NeurIPS 2018, "Paraphrasing Complex Network: Network Compression
    via Factor Transfer").

    The teacher factor ``F_t`` is the encoding of the teacher's feature by a paraphraser (an autoencoder
    trained beforehand to reconstruct it); the student factor ``F_s`` comes from the student's translator.
    Each factor is flattened per sample and divided by its L2 norm, ``u = F / ‖F‖₂``; then

    - ``mode="paper"`` (the paper's equation): ``ft = (1/B) Σ_i ‖u_s,i − u_t,i‖_p``;
    - ``mode="code"`` (the authors' code, RepDistiller and torchdistill at ``p=1``; default, since the CIFAR
      weight 200 belongs to it): ``ft = mean over all B·D elements of |u_s − u_t|^p``.

    The paper uses ``p = 1``. Factors of different spatial sizes are pooled to the smaller one first.
    """
    if mode not in ("code", "paper"):
        raise ValueError(f"ft_loss mode must be 'code' (the authors' code) or 'paper', got {mode!r}")
    if p <= 0:
        raise ValueError(f"ft_loss p must be positive (the paper uses 1), got {p!r}")
    _check_batch(student_factor, teacher_factor, "ft_loss")
    s, t = match_spatial(_fp32(student_factor), _fp32(teacher_factor))
    s, t = F.normalize(s.flatten(1), dim=1), F.normalize(t.flatten(1), dim=1)
    if s.shape != t.shape:
        raise ValueError(f"ft_loss: the student factor has {s.shape[1]} values per sample and the teacher factor "
                         f"{t.shape[1]}; the translator must output the paraphraser's factor width")
    diff = (s - t).abs()
    if mode == "code":
        return diff.pow(p).mean()
    return torch.linalg.vector_norm(diff, ord=p, dim=1).mean()


# ------------------------------------------------------------------------------------------- AB
def ab_loss(student_feature: Tensor, teacher_feature: Tensor, margin: float = 1.0) -> Tensor:
    """Activation-boundary transfer (Heo, Lee, Yun & Choi, AAAI 2019, "Knowledge Transfer via Distillation
    of Activation Boundaries Formed by Hidden Neurons").

    A neuron's activation boundary is where its pre-activation changes sign. With ``ρ = 1[f_t > 0]`` (the
    teacher's neuron is active) and ``s`` the student's connector output, the alternative (squared hinge)
    loss pushes ``s`` beyond the margin ``μ`` on the teacher's side::

        ab = (1/B) Σ_elements [ρ · relu(μ − s)² + (1 − ρ) · relu(μ + s)²]

    summed over neurons (all channels and positions) and averaged over the batch. ``ρ`` is the same whether
    the teacher's feature is read before or after its ReLU, so post-ReLU stage outputs serve as well.
    """
    if margin < 0:
        raise ValueError(f"ab_loss margin must be >= 0 (the paper uses 1), got {margin!r}")
    _check_batch(student_feature, teacher_feature, "ab_loss")
    s, t = match_spatial(_fp32(student_feature), _fp32(teacher_feature))
    if s.shape != t.shape:
        raise ValueError(f"ab_loss compares neurons one to one; got student {tuple(s.shape)} and teacher "
                         f"{tuple(t.shape)} (AB's connector maps the student to the teacher's width)")
    active = (t > 0).to(s.dtype)
    per_neuron = active * F.relu(margin - s).pow(2) + (1.0 - active) * F.relu(margin + s).pow(2)
    return per_neuron.sum() / s.shape[0]
