"""kd_lightning/data/transfer.py: transfer sets (unlabeled samples only the distillation term learns from), the
MNIST-1D transfer set, and the teacher cache over a transfer set."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from helpers import C, D, Spy, small_data
from kd_lightning import DistillationModule
from kd_lightning.data import MNIST1DDataModule
from kd_lightning.data.arrays import ArrayDataModule
from kd_lightning.data.transfer import TransferDataModule, TransferSetDataset, has_transfer_set
from kd_lightning.exact_resume import ResumableSampler
from kd_lightning.losses import KD
from kd_lightning.losses import functional as KF


class Labeled(ArrayDataModule):
    def __init__(self, **kw):
        super().__init__(val_fraction=0.25, batch_size=8, **kw)

    def load_arrays(self):
        x, y = small_data(32, seed=1)
        y[:C] = torch.arange(C)
        return x.numpy(), y.numpy(), x[:8].numpy(), y[:8].numpy()

    def transfer_dataset(self):
        return TensorDataset(small_data(16, seed=9)[0] + 100.0)  # recognisable: every value > 90


def test_transfer_samples_skipped_by_ce_and_used_by_kd(make_trainer):
    seen = []

    class Rec(KD):
        def forward(self, inputs):
            out = super().forward(inputs)
            seen.append((inputs, {k: v.detach() for k, v in out.items()}))
            return out

    dm = TransferDataModule(Labeled())
    module = DistillationModule(Spy(1), Spy(0), loss=Rec(temperature=2.0, ce_weight=0.5, kd_weight=0.5))
    make_trainer(max_epochs=1, max_steps=-1, limit_val_batches=0).fit(module, datamodule=dm)
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
    x, y = small_data(6)
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
    # both shuffle in an order a resumed fit can continue (kd_lightning.exact_resume)
    assert all(isinstance(m.train_dataloader().sampler, ResumableSampler) for m in (dm, wrapped))
    assert wrapped.num_classes == 10
    assert torch.equal(wrapped.val_dataloader().dataset.tensors[0], dm.x_val)
    with pytest.raises(ValueError, match="transfer_seed"):
        MNIST1DDataModule(cache_dir=str(tmp_path), transfer_samples=10, transfer_seed=42)
    with pytest.raises(ValueError, match="no transfer set"):
        TransferDataModule(MNIST1DDataModule(cache_dir=str(tmp_path))).transfer_set()


def test_teacher_cache_over_a_transfer_set(tmp_path):
    """Offline KD with a transfer set: rows follow the concatenated (labeled + transfer) indices."""
    from kd_lightning.cache import TeacherOutputsDataModule

    teacher = Spy(0).eval()
    cached = TeacherOutputsDataModule(TransferDataModule(Labeled()), teacher, tmp_path, device="cpu")
    cached.setup("fit")
    assert len(cached.outputs["train"]) == 24 + 16
    n_unlabeled = 0
    for batch in cached.train_dataloader():
        with torch.no_grad():
            expected = teacher.net(batch["input"])
        assert torch.allclose(batch["teacher_logits"], expected, atol=1e-6)
        assert torch.equal(batch["labeled"], batch["index"] < 24)
        assert (batch["target"][~batch["labeled"]] == -1).all()
        n_unlabeled += int((~batch["labeled"]).sum())
    assert n_unlabeled == 16
