"""kd_lightning/losses/reviewkd.py: the fusion modules, the warm-up, a checkpoint round trip and a short MNIST-1D
run."""
from __future__ import annotations

import pytest
import torch

from .helpers import distill_mnist1d, term_fell
from kd_lightning.losses import DistillInputs, ReviewKD
from kd_lightning.losses import functional as KF
from kd_lightning.losses.reviewkd import AttentionFusion

STAGES = ["a", "b", "c"]


def inputs(epoch=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = {"a": torch.randn(4, 3, 8, 8, generator=g), "b": torch.randn(4, 5, 4, 4, generator=g),
         "c": torch.randn(4, 6, 2, 2, generator=g)}
    t = {"a": torch.randn(4, 7, 8, 8, generator=g), "b": torch.randn(4, 9, 4, 4, generator=g),
         "c": torch.randn(4, 11, 2, 2, generator=g)}
    return DistillInputs(student_logits=torch.randn(4, 10, generator=g), student_features=s, teacher_features=t,
                         epoch=epoch)


def built(**kw):
    loss = ReviewKD(student_layers=STAGES, teacher_layers=STAGES, mid_channels=8, **kw)
    loss.build(inputs())
    return loss


def test_fusion_runs_deep_to_shallow_at_the_teachers_widths():
    loss = built()
    assert [type(a) for a in loss.adapters] == [AttentionFusion] * 3
    assert [a.attention is None for a in loss.adapters] == [False, False, True]  # the deepest has nothing to fuse
    x = inputs()
    fused = loss.fuse([x.student_features[k] for k in STAGES])
    assert [tuple(f.shape) for f in fused] == [(4, 7, 8, 8), (4, 9, 4, 4), (4, 11, 2, 2)]
    # the review: a change in the deepest student stage reaches the shallowest fused output
    changed = dict(x.student_features, c=x.student_features["c"] + 1.0)
    again = loss.fuse([changed[k] for k in STAGES])
    assert not torch.allclose(again[0], fused[0]) and torch.equal(loss.fuse([x.student_features[k] for k in STAGES])[0],
                                                                   fused[0])


def test_term_is_the_hcl_sum_and_the_weight_warms_up():
    loss = built(weight=2.0, warmup_epochs=4)
    loss.eval()  # BatchNorm with running statistics: the same output for the same input
    x = inputs(epoch=1.0)
    fused = loss.fuse([x.student_features[k] for k in STAGES])
    expected = sum(KF.hcl_loss(f, x.teacher_features[k]) for f, k in zip(fused, STAGES))
    out = loss(x)
    torch.testing.assert_close(out["reviewkd"], expected)
    torch.testing.assert_close(out["loss"], 2.0 * 0.25 * expected)  # epoch 1 of 4
    x.epoch = 6.0
    torch.testing.assert_close(loss(x)["loss"], 2.0 * expected)
    assert built(warmup_epochs=0).warmup(0.0) == 1.0


def test_rebuilt_from_its_state_dict():
    loss = built()
    loss.eval()
    fresh = ReviewKD(student_layers=STAGES, teacher_layers=STAGES, mid_channels=8)
    assert fresh.needs_build
    fresh.load_state_dict(loss.state_dict())
    fresh.eval()
    assert not fresh.needs_build
    torch.testing.assert_close(fresh(inputs())["loss"], loss(inputs())["loss"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="mid_channels"):
        ReviewKD(pairs=[("a", "a")], mid_channels=0)
    with pytest.raises(ValueError, match="levels"):
        ReviewKD(pairs=[("a", "a")], levels=(2, -1))
    with pytest.raises(ValueError, match="warmup_epochs"):
        ReviewKD(pairs=[("a", "a")], warmup_epochs=-1)


def test_trains_a_mnist1d_student(make_trainer):
    stages = ["blocks.0", "blocks.1", "blocks.2"]
    loss = ReviewKD(student_layers=stages, teacher_layers=stages, mid_channels=16, warmup_epochs=0)
    values, acc, teacher_acc, _ = distill_mnist1d(make_trainer, loss, "reviewkd")
    assert term_fell(values), values
    assert teacher_acc > 0.6 and acc > 0.2, (acc, teacher_acc)  # chance is 0.1
