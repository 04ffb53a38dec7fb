"""kd_lightning/cache/topk.py: top-k log-probabilities reconstruct a distribution that keeps the top-k
probabilities exactly and spreads the tail evenly."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from kd_lightning.cache import reconstruct_topk, topk_logprobs

from .helpers import C


@pytest.mark.parametrize("k", [1, 3, 9, 10])
def test_topk_reconstruction_keeps_topk_probabilities_exactly(k):
    torch.manual_seed(k)
    z = torch.randn(64, C) * 3
    lp, ix = topk_logprobs(z, k)
    rec = reconstruct_topk(lp, ix, C)
    p, q = F.softmax(z, -1), F.softmax(rec, -1)
    # softmax at T=1: the top-k probabilities are the teacher's ...
    assert torch.allclose(q.gather(1, ix), p.gather(1, ix), atol=1e-6)
    assert torch.allclose(q.sum(-1), torch.ones(64), atol=1e-6)
    # ... the other classes share the rest equally ...
    rest = 1 - p.gather(1, ix).sum(-1)
    mask = torch.ones_like(p, dtype=torch.bool).scatter_(1, ix, False)
    if k < C:
        others = q[mask].view(64, C - k)
        assert torch.allclose(others, (rest / (C - k))[:, None].expand_as(others), atol=1e-6)
    # ... so the total-variation distance to the teacher is at most the tail mass (0 for k = C)
    tv = 0.5 * (p - q).abs().sum(-1)
    assert (tv <= rest.clamp_min(0) + 1e-6).all()
    if k == C:
        assert torch.allclose(q, p, atol=1e-6)
