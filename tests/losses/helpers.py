"""Logits, objective inputs and a tolerant comparison shared by the loss tests."""
from __future__ import annotations

import pytest
import torch

from kd_lightning.losses import DistillInputs


def logits(b=5, c=7, seed=0, scale=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g, dtype=torch.float64) * scale).to(dtype)


def assert_close_to(value, expected, tol=1e-5):
    value = value.detach() if isinstance(value, torch.Tensor) else value
    expected = expected.detach() if isinstance(expected, torch.Tensor) else expected
    assert float(value) == pytest.approx(float(expected), rel=tol, abs=tol)


# ------------------------------------------------------------------------------------- objectives
def make_inputs(seed=0, epoch=1.0, with_target=True, labeled=None):
    s, t = logits(6, 5, seed=seed), logits(6, 5, seed=seed + 100)
    y = torch.tensor([0, 1, 2, 3, 4, 0]) if with_target else None
    return DistillInputs(student_logits=s.requires_grad_(), teacher_logits=t, target=y, epoch=epoch, labeled=labeled)
