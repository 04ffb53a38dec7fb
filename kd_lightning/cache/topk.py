"""Top-k storage of teacher outputs and the logits rebuilt from it (see :mod:`kd_lightning.cache`)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def topk_logprobs(logits: Tensor, k: int) -> tuple:
    """The ``k`` largest T=1 log-probabilities of each row and their class indices."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    values, indices = logp.topk(k, dim=-1)
    return values, indices


def reconstruct_topk(logprobs: Tensor, indices: Tensor, num_classes: int, rest: Optional[Tensor] = None) -> Tensor:
    """Logits ``z'`` ``[N, C]`` from top-k log-probabilities ``[N, k]`` (see the module docstring).

    ``z'_i = log p_i`` on the stored classes and ``z'_j = log(r / (C - k))`` elsewhere, with
    ``r = 1 - sum_i p_i`` (or the stored ``rest`` ``[N]``; clamped at the smallest float32 > 0), so
    ``softmax(z')`` equals the stored top-k probabilities exactly (up to rounding of the stored values)
    and spreads ``r`` evenly.
    """
    logprobs = logprobs.float()
    k = logprobs.shape[-1]
    if k >= num_classes:
        return torch.empty(logprobs.shape[0], num_classes, dtype=torch.float32,
                           device=logprobs.device).scatter_(1, indices.long(), logprobs)
    rest = 1.0 - logprobs.exp().sum(-1, keepdim=True) if rest is None else rest.float().reshape(-1, 1)
    rest = rest.clamp_min(torch.finfo(torch.float32).tiny)
    fill = torch.log(rest) - math.log(num_classes - k)
    out = fill.expand(-1, num_classes).clone()
    return out.scatter_(1, indices.long(), logprobs)

