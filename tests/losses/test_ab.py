"""kd_lightning/losses/ab.py: connectors, stage weights, and a short MNIST-1D run."""
from __future__ import annotations

import pytest
import torch

from kd_lightning.losses import AB, DistillInputs
from kd_lightning.losses import functional as KF

from .helpers import distill_mnist1d, term_fell


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = {"a": torch.randn(4, 3, 10, generator=g), "b": torch.randn(4, 5, 5, generator=g)}  # 1-D maps
    t = {"a": torch.randn(4, 7, 10, generator=g), "b": torch.randn(4, 9, 5, generator=g)}
    return DistillInputs(student_logits=torch.randn(4, 10, generator=g), student_features=s, teacher_features=t)


def test_connected_student_against_the_teacher_boundaries_with_halving_stage_weights():
    loss = AB(student_layers=["a", "b"], teacher_layers=["a", "b"], weight=0.5)
    x = inputs()
    loss.build(x)
    loss.eval()
    c = [a(x.student_features[k]) for a, k in zip(loss.adapters, "ab")]
    assert c[0].shape == (4, 7, 10) and c[1].shape == (4, 9, 5)
    expected = 0.5 * KF.ab_loss(c[0], x.teacher_features["a"]) + KF.ab_loss(c[1], x.teacher_features["b"])
    out = loss(x)
    torch.testing.assert_close(out["ab"], expected)
    torch.testing.assert_close(out["loss"], 0.5 * expected)
    flat = AB(student_layers=["a", "b"], teacher_layers=["a", "b"], stage_decay=False, margin=0.5)
    flat.build(x)
    flat.load_state_dict(loss.state_dict())
    flat.eval()
    torch.testing.assert_close(flat(x)["ab"], sum(KF.ab_loss(ci, x.teacher_features[k], 0.5) for ci, k in zip(c, "ab")))


def test_default_weight_and_bad_margin():
    assert AB(pairs=[("a", "a")]).weight == 0.003
    with pytest.raises(ValueError, match="margin"):
        AB(pairs=[("a", "a")], margin=-1.0)


def test_trains_a_mnist1d_student(make_trainer):
    stages = ["blocks.0", "blocks.1", "blocks.2"]
    values, acc, teacher_acc, _ = distill_mnist1d(make_trainer, AB(student_layers=stages, teacher_layers=stages), "ab")
    assert term_fell(values), values
    assert teacher_acc > 0.6 and acc > 0.2, (acc, teacher_acc)  # chance is 0.1
