"""kd_lightning/augment.py: Mixup and CutMix, and the batch_transform hook that shows teacher and student the same
transformed batch (consistent teaching, Beyer et al. 2022)."""
from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers import Spy, small_data
from kd_lightning import DistillationModule
from kd_lightning.augment import CutMix, Mixup
from kd_lightning.losses import KD


# -------------------------------------------------------------------------------------- the hook
def test_teacher_and_student_see_the_same_mixed_batch(make_trainer):
    x, y = small_data()
    teacher, student = Spy(0), Spy(1)
    module = DistillationModule(student, teacher, loss=KD(temperature=1.0, ce_weight=0.0, kd_weight=1.0),
                                optimizer=functools.partial(torch.optim.SGD, lr=0.1), batch_transform=Mixup())
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    make_trainer(max_steps=4, limit_val_batches=1).fit(module, loader, loader)
    # one epoch of 4 training steps, then one validation batch
    assert len(teacher.seen) == len(student.seen) == 5
    for step in range(4):
        raw = x[8 * step: 8 * step + 8]
        assert torch.equal(teacher.seen[step], student.seen[step]), "the teacher labels the student's view"
        assert not torch.allclose(teacher.seen[step], raw), "the training batch was mixed"
    # evaluation is untouched
    assert torch.equal(student.seen[4], x[:8]) and torch.equal(teacher.seen[4], x[:8])


def test_batch_transform_labeled_mask_reaches_the_objective(make_trainer):
    x, y = small_data()
    seen = {}

    class Rec(KD):
        def forward(self, inputs):
            seen["labeled"], seen["target"] = inputs.labeled, inputs.target
            return super().forward(inputs)

    def half(xb, yb):
        return xb * 2, yb, torch.arange(len(yb)) % 2 == 0

    module = DistillationModule(Spy(1), Spy(0), loss=Rec(), batch_transform=half)
    make_trainer(max_steps=1).fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
    assert seen["labeled"].tolist() == [True, False] * 4 and torch.equal(seen["target"], y[:8])
    bad = DistillationModule(Spy(1), Spy(0), batch_transform=lambda a, b: (a, b))
    with pytest.raises(TypeError, match=r"\(x, y, labeled\)"):
        make_trainer(max_steps=1).fit(bad, DataLoader(TensorDataset(x, y), batch_size=8))
    with pytest.raises(TypeError, match="callable"):
        DistillationModule(Spy(1), Spy(0), batch_transform="mixup")


# ------------------------------------------------------------------------------- mixup and cutmix
def test_mixup_is_a_convex_combination_of_batch_pairs():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 5)
    y = torch.arange(16)
    out, y2, labeled = Mixup(generator=torch.Generator().manual_seed(1))(x, y)
    assert out.shape == x.shape and torch.equal(y2, y) and labeled.dtype == torch.bool and not labeled.any()
    # recover lambda and the pairing: every row is lam * x_i + (1 - lam) * x_j for one j
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(16, generator=g)
    lam = float(torch.rand(1, generator=g))
    assert 0.0 <= lam <= 1.0
    assert torch.allclose(out, lam * x + (1 - lam) * x[perm], atol=1e-6)
    # per-sample weights, Beta(alpha, alpha), and p=0 (no mixing, labels kept)
    out, _, _ = Mixup(alpha=0.4, per_sample=True)(x, y)
    assert out.shape == x.shape
    same, _, labeled = Mixup(p=0.0)(x, y)
    assert same is x and labeled is None
    with pytest.raises(ValueError, match="alpha"):
        Mixup(alpha=-1.0)
    with pytest.raises(ValueError, match="probability"):
        Mixup(p=2.0)


def test_uniform_lambda_covers_the_unit_interval():
    g = torch.Generator().manual_seed(0)
    mix = Mixup(generator=g)
    lams = torch.cat([mix._lam(1) for _ in range(2000)])
    assert 0.0 <= float(lams.min()) < 0.02 and 0.98 < float(lams.max()) <= 1.0
    assert abs(float(lams.mean()) - 0.5) < 0.03


def test_cutmix_pastes_a_box_from_a_paired_image():
    torch.manual_seed(0)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 16).clone()
    out, _, labeled = CutMix(generator=torch.Generator().manual_seed(3))(x, torch.arange(4))
    assert out.shape == x.shape and not labeled.any()
    for i in range(4):
        assert len(out[i].unique()) <= 2  # its own pixels and the pasted box of one partner
    changed = (out != x).any(dim=1)  # [B, H, W]
    if changed.any():  # a rectangular box (same for every image)
        rows, cols = changed.any(0).any(1).nonzero(), changed.any(0).any(0).nonzero()
        box = changed.any(0)[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()
    seq, _, _ = CutMix()(torch.randn(6, 40), None)  # 1-D data: a segment
    assert seq.shape == (6, 40)


