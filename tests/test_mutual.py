"""kd_lightning/mutual.py: deep mutual learning of two students, and the peer KD targets."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from helpers import DigitsImages, TinyCNN
from kd_lightning.mutual import MutualLearningModule


def test_deep_mutual_learning_two_students(make_trainer):
    torch.manual_seed(0)
    torch.manual_seed(1)
    first = TinyCNN(4, stride=2)  # the feature tests' student
    module = MutualLearningModule([first, TinyCNN(6)], temperature=1.0,
                                  optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    trainer = make_trainer(max_steps=5, limit_val_batches=1)
    before = [copy.deepcopy(s.state_dict()) for s in module.students]
    trainer.fit(module, datamodule=DigitsImages())
    m = trainer.callback_metrics
    for key in ("train/loss", "train/ce_0", "train/ce_1", "train/kd_0", "train/kd_1", "val/acc_0", "val/acc_1",
                "val/acc", "val/acc_ensemble", "val/acc_best"):
        assert key in m and torch.isfinite(m[key]), key
    assert float(m["val/acc"]) == pytest.approx(max(float(m["val/acc_0"]), float(m["val/acc_1"])))
    for s, b in zip(module.students, before):
        assert any(not torch.equal(b[k], v) for k, v in s.state_dict().items() if v.is_floating_point())
    assert len(trainer.optimizers) == 1


def test_mutual_kd_targets():
    from kd_lightning.losses.functional import kd_loss

    torch.manual_seed(0)
    students = [nn.Linear(3, 4) for _ in range(3)]
    each = MutualLearningModule(students, temperature=2.0, peer_target="each")
    mean = MutualLearningModule(students, temperature=2.0, peer_target="mean")
    z = [torch.randn(5, 4, requires_grad=True) for _ in range(3)]
    ref = (kd_loss(z[0], z[1], 2.0) + kd_loss(z[0], z[2], 2.0)) / 2
    torch.testing.assert_close(each._peer_kd(0, z), ref)
    p = (torch.softmax(z[1] / 2, -1) + torch.softmax(z[2] / 2, -1)) / 2
    ps = torch.log_softmax(z[0] / 2, -1)
    ref_mean = 4.0 * (p * (p.log() - ps)).sum(-1).mean()
    torch.testing.assert_close(mean._peer_kd(0, z), ref_mean)
    mean._peer_kd(0, z).backward()
    assert z[1].grad is None and z[0].grad is not None  # peers are detached
    with pytest.raises(ValueError, match="at least 2"):
        MutualLearningModule([nn.Linear(3, 4)])
