"""Consistent teaching (Beyer et al. 2022): batch transforms seen by teacher and student alike, mixup and
cutmix, and transfer sets that only the distillation term learns from."""
from __future__ import annotations

import functools
from typing import List

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning import DistillationModule
from kd_lightning.augment import CutMix, Mixup
from kd_lightning.data import MNIST1DDataModule
from kd_lightning.data.arrays import ArrayDataModule
from kd_lightning.data.transfer import TransferDataModule, TransferSetDataset, has_transfer_set
from kd_lightning.losses import KD
from kd_lightning.losses import functional as KF

D, C = 8, 4


class Spy(nn.Module):
    """A network that records every input it is called with."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Linear(D, C)
        self.seen: List[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


def trainer(tmp_path, **kw) -> L.Trainer:
    opts = dict(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                default_root_dir=str(tmp_path))
    opts.update(kw)
    return L.Trainer(**opts)


def data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randint(0, C, (n,), generator=g)


# -------------------------------------------------------------------------------------- the hook
def test_teacher_and_student_see_the_same_mixed_batch(tmp_path):
    x, y = data()
    teacher, student = Spy(0), Spy(1)
    module = DistillationModule(student, teacher, loss=KD(temperature=1.0, ce_weight=0.0, kd_weight=1.0),
                                optimizer=functools.partial(torch.optim.SGD, lr=0.1), batch_transform=Mixup())
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    trainer(tmp_path, max_steps=4, limit_val_batches=1).fit(module, loader, loader)
    # one epoch of 4 training steps, then one validation batch
    assert len(teacher.seen) == len(student.seen) == 5
    for step in range(4):
        raw = x[8 * step: 8 * step + 8]
        assert torch.equal(teacher.seen[step], student.seen[step]), "the teacher labels the student's view"
        assert not torch.allclose(teacher.seen[step], raw), "the training batch was mixed"
    # evaluation is untouched
    assert torch.equal(student.seen[4], x[:8]) and torch.equal(teacher.seen[4], x[:8])


def test_batch_transform_labeled_mask_reaches_the_objective(tmp_path):
    x, y = data()
    seen = {}

    class Rec(KD):
        def forward(self, inputs):
            seen["labeled"], seen["target"] = inputs.labeled, inputs.target
            return super().forward(inputs)

    def half(xb, yb):
        return xb * 2, yb, torch.arange(len(yb)) % 2 == 0

    module = DistillationModule(Spy(1), Spy(0), loss=Rec(), batch_transform=half)
    trainer(tmp_path, max_steps=1).fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
    assert seen["labeled"].tolist() == [True, False] * 4 and torch.equal(seen["target"], y[:8])
    bad = DistillationModule(Spy(1), Spy(0), batch_transform=lambda a, b: (a, b))
    with pytest.raises(TypeError, match=r"\(x, y, labeled\)"):
        trainer(tmp_path, max_steps=1).fit(bad, DataLoader(TensorDataset(x, y), batch_size=8))
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


# ---------------------------------------------------------------------------------- transfer sets
class Labeled(ArrayDataModule):
    def __init__(self, **kw):
        super().__init__(val_fraction=0.25, batch_size=8, **kw)

    def load_arrays(self):
        x, y = data(32, seed=1)
        y[:C] = torch.arange(C)
        return x.numpy(), y.numpy(), x[:8].numpy(), y[:8].numpy()

    def transfer_dataset(self):
        return TensorDataset(data(16, seed=9)[0] + 100.0)  # recognisable: every value > 90


def test_transfer_samples_skipped_by_ce_and_used_by_kd(tmp_path):
    seen = []

    class Rec(KD):
        def forward(self, inputs):
            out = super().forward(inputs)
            seen.append((inputs, {k: v.detach() for k, v in out.items()}))
            return out

    dm = TransferDataModule(Labeled())
    module = DistillationModule(Spy(1), Spy(0), loss=Rec(temperature=2.0, ce_weight=0.5, kd_weight=0.5))
    trainer(tmp_path, max_epochs=1, max_steps=-1, limit_val_batches=0).fit(module, datamodule=dm)
    n_transfer = 0
    for inputs, terms in seen:
        transfer = inputs.student_logits.new_zeros(len(inputs.target), dtype=torch.bool)
        transfer |= ~inputs.labeled
        assert torch.equal(inputs.target[transfer], torch.full_like(inputs.target[transfer], -1))
        n_transfer += int(transfer.sum())
        s, t = inputs.student_logits.detach(), inputs.teacher_logits
        lab = inputs.labeled
        expected_ce = F.cross_entropy(s[lab], inputs.target[lab]) if lab.any() else torch.tensor(0.0)
        assert float(terms["ce"]) == pytest.approx(float(expected_ce), rel=1e-5, abs=1e-6)
        assert float(terms["kd"]) == pytest.approx(float(KF.kd_loss(s, t, 2.0)), rel=1e-5)
    assert n_transfer == 16, "every transfer sample went through the KD term once per epoch"


def test_transfer_set_dataset_items():
    x, y = data(6)
    ds = TransferSetDataset(TensorDataset(x, y), torch.ones(3, D))
    assert len(ds) == 9
    first, last = ds[0], ds[8]
    assert first["labeled"] is True and int(first["target"]) == int(y[0]) and first["index"] == 0
    assert last["labeled"] is False and int(last["target"]) == -1 and last["index"] == 8
    batch = next(iter(DataLoader(ds, batch_size=9)))
    assert batch["labeled"].tolist() == [True] * 6 + [False] * 3
    assert batch["target"].dtype == torch.long
    # the batched gather (used by TransferDataModule's loader) builds exactly the same batch
    order = [7, 0, 3, 8, 6, 1]
    fast = ds.get_batch(order)
    slow = torch.utils.data.default_collate([ds[i] for i in order])
    assert set(fast) == set(slow)
    for key in slow:
        assert torch.equal(fast[key], slow[key]) and fast[key].dtype == slow[key].dtype, key


def test_mnist1d_transfer_samples_and_the_baseline_never_sees_them(tmp_path):
    dm = MNIST1DDataModule(cache_dir=str(tmp_path), transfer_samples=250, transfer_seed=7)
    dm.setup("fit")
    extra = dm.transfer_dataset()
    assert len(extra) == 250 and extra.tensors[0].shape == (250, 40) and len(extra.tensors) == 1
    assert has_transfer_set(dm) and not has_transfer_set(MNIST1DDataModule(cache_dir=str(tmp_path)))
    # new sequences, not copies of the labeled ones
    train = dm.x_train
    dists = torch.cdist(extra.tensors[0][:50], train).min(-1).values
    assert float(dists.min()) > 1e-3
    # the module's own loaders (teacher, baseline) carry labeled data only ...
    assert len(dm.train_dataloader().dataset) == len(dm.y_train)
    # ... and the student's wrapper adds the transfer set
    wrapped = TransferDataModule(dm)
    assert len(wrapped.train_dataloader().dataset) == len(dm.y_train) + 250
    assert wrapped.num_classes == 10
    assert torch.equal(wrapped.val_dataloader().dataset.tensors[0], dm.x_val)
    with pytest.raises(ValueError, match="transfer_seed"):
        MNIST1DDataModule(cache_dir=str(tmp_path), transfer_samples=10, transfer_seed=42)
    with pytest.raises(ValueError, match="no transfer set"):
        TransferDataModule(MNIST1DDataModule(cache_dir=str(tmp_path))).transfer_set()


def test_app_gives_the_transfer_set_to_the_student_stage_only(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from kd_lightning.app import pipeline
    from kd_lightning.app.confdir import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            "data=mnist1d_transfer", "data.transfer_samples=300", "distill=function_matching",
            "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0",
            "logger=none", "callbacks=none"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    stages = {}
    real = pipeline.fit_and_test

    def spy(stage, trainer, module, datamodule, net, *a, **kw):
        batch = next(iter(datamodule.train_dataloader()))
        stages[stage] = (type(datamodule).__name__, len(datamodule.train_dataloader().dataset), module, batch)
        return real(stage, trainer, module, datamodule, net, *a, **kw)

    monkeypatch.setattr(pipeline, "fit_and_test", spy)
    pipeline.run(cfg)
    assert stages["teacher"][:2] == ("MNIST1DDataModule", 3600)
    assert stages["baseline"][:2] == ("MNIST1DDataModule", 3600)
    assert stages["student"][:2] == ("TransferDataModule", 3900)
    assert isinstance(stages["student"][2].batch_transform, Mixup)
    assert stages["baseline"][2].batch_transform is None
    assert not isinstance(stages["baseline"][3], dict)  # (x, y) tuples: no unlabeled samples


def test_teacher_cache_over_a_transfer_set(tmp_path):
    """Offline KD with a transfer set: rows follow the concatenated (labeled + transfer) indices."""
    from kd_lightning.cache import CachedTeacherDataModule

    teacher = Spy(0).eval()
    cached = CachedTeacherDataModule(TransferDataModule(Labeled()), teacher, tmp_path, device="cpu")
    cached.setup("fit")
    assert len(cached.caches["train"]) == 24 + 16
    n_unlabeled = 0
    for batch in cached.train_dataloader():
        with torch.no_grad():
            expected = teacher.net(batch["input"])
        assert torch.allclose(batch["teacher_logits"], expected, atol=1e-6)
        assert torch.equal(batch["labeled"], batch["index"] < 24)
        assert (batch["target"][~batch["labeled"]] == -1).all()
        n_unlabeled += int((~batch["labeled"]).sum())
    assert n_unlabeled == 16
