"""kd_lightning/losses/fsp.py: consecutive layers form the matrices, connectors only where widths differ, and a short
MNIST-1D run."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_lightning.losses import FSP, DistillInputs
from kd_lightning.losses import functional as KF

from .helpers import distill_mnist1d, term_fell


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = {k: torch.randn(4, c, n, n, generator=g) for k, c, n in (("a", 3, 8), ("b", 6, 4), ("c", 6, 2))}
    t = {k: torch.randn(4, c, n, n, generator=g) for k, c, n in (("a", 5, 8), ("b", 6, 4), ("c", 7, 2))}
    return DistillInputs(student_logits=torch.randn(4, 10, generator=g), student_features=s, teacher_features=t)


def test_consecutive_layers_and_connectors_where_widths_differ():
    loss = FSP(student_layers=["a", "b", "c"], teacher_layers=["a", "b", "c"], weight=2.0, mode="paper")
    x = inputs()
    loss.build(x)
    assert [type(a) for a in loss.adapters] == [nn.Conv2d, nn.Identity, nn.Conv2d]
    s = [a(x.student_features[k]) for a, k in zip(loss.adapters, "abc")]
    t = [x.teacher_features[k] for k in "abc"]
    expected = KF.fsp_loss(s[0], s[1], t[0], t[1], "paper") + KF.fsp_loss(s[1], s[2], t[1], t[2], "paper")
    out = loss(x)
    torch.testing.assert_close(out["fsp"], expected)
    torch.testing.assert_close(out["loss"], 2.0 * expected)


def test_equal_widths_have_no_connector_and_give_the_plain_loss():
    x = inputs()
    loss = FSP(pairs=[("b", "b"), ("c", "b")])  # widths 6/6 on both sides
    loss.build(x)
    assert sum(p.numel() for p in loss.parameters()) == 0 and loss.weight == 50.0
    expected = KF.fsp_loss(x.student_features["b"], x.student_features["c"], x.teacher_features["b"],
                           x.teacher_features["b"])
    torch.testing.assert_close(loss(x)["fsp"], expected)


def test_one_layer_or_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        FSP(pairs=[("a", "a")])
    with pytest.raises(ValueError, match="mode"):
        FSP(pairs=[("a", "a"), ("b", "b")], mode="other")


def test_trains_a_mnist1d_student(make_trainer):
    stages = ["blocks.0", "blocks.1", "blocks.2"]
    loss = FSP(student_layers=stages, teacher_layers=stages)
    values, acc, teacher_acc, _ = distill_mnist1d(make_trainer, loss, "fsp")
    assert term_fell(values), values
    assert teacher_acc > 0.6 and acc > 0.2, (acc, teacher_acc)  # chance is 0.1
