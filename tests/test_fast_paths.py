"""The per-step shortcuts taken for speed give the same results as the general paths they bypass."""
from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning import ClassifierModule
from kd_lightning.batch import move_flat_batch
from kd_lightning.cache import TeacherOutputCache
from kd_lightning.module import quiet_lightning_notes
from kd_lightning.progress import ThrottledRichProgressBar


def one_epoch_trainer(tmp_path, **kw) -> L.Trainer:
    opts = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                enable_model_summary=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    return L.Trainer(**{**opts, **kw})


# ---------------------------------------------------------------------------------- batch transfer
def test_flat_batches_are_moved_per_tensor_and_keep_their_type():
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 0])
    meta = torch.device("meta")
    moved = move_flat_batch({"input": x, "target": y}, meta)
    assert type(moved) is dict and set(moved) == {"input", "target"}
    assert all(v.device.type == "meta" and v.shape == w.shape for v, w in zip(moved.values(), (x, y)))
    assert type(move_flat_batch((x, y), meta)) is tuple
    assert type(move_flat_batch([x, y], meta)) is list
    cpu = move_flat_batch((x, y), torch.device("cpu"))
    assert cpu[0] is x  # no copy to the same device


@dataclass
class Pair:
    x: Tensor
    y: Tensor


@pytest.mark.parametrize("batch", [
    {"input": torch.zeros(2), "meta": ["a", "b"]},  # a non-tensor value
    ({"x": torch.zeros(2)}, torch.zeros(2)),  # nested
    Pair(torch.zeros(2), torch.zeros(2)),  # a dataclass
    torch.zeros(2),  # a bare tensor
])
def test_other_batches_are_left_to_lightning(batch):
    assert move_flat_batch(batch, torch.device("cpu")) is None


def test_module_moves_other_batches_through_lightning():
    module = ClassifierModule(nn.Linear(2, 2))
    batch = {"input": torch.zeros(2, 2), "names": ["a", "b"]}
    out = module.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert out["names"] == ["a", "b"] and torch.equal(out["input"], batch["input"])


# ------------------------------------------------------------------------------------ progress bar
def test_throttled_bar_updates_at_most_at_its_rate_and_always_at_an_epoch_end(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.callbacks.progress import rich_progress
    from rich.console import Console

    monkeypatch.setattr(rich_progress, "get_console", lambda: Console(file=io.StringIO()))
    shown = []
    stock = RichProgressBar.on_train_batch_end

    def counting(self, trainer, pl_module, outputs, batch, batch_idx):
        shown.append(batch_idx)
        stock(self, trainer, pl_module, outputs, batch, batch_idx)

    monkeypatch.setattr(RichProgressBar, "on_train_batch_end", counting)
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(240, 4), torch.randint(0, 3, (240,))), batch_size=8)
    bar = ThrottledRichProgressBar(refresh_rate=1)  # one update a second: a 30-batch epoch takes far less
    trainer = one_epoch_trainer(tmp_path, max_epochs=2, enable_progress_bar=True, callbacks=[bar])
    module = ClassifierModule(nn.Linear(4, 3), optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    trainer.fit(module, train_dataloaders=data)
    assert shown.count(29) == 2  # each epoch's last batch reaches the bar
    assert shown[0] == 0 and len(shown) < 10  # the first does too; most batches do not
    assert bar.progress.tasks[bar.train_progress_bar_id].completed == 30


# -------------------------------------------------------------------------------------- cache rows
def test_cache_rows_accept_every_index_form_and_name_out_of_range_rows(tmp_path):
    teacher = nn.Linear(4, 3)
    x = torch.randn(10, 4)
    cache = TeacherOutputCache.build(teacher, TensorDataset(x, torch.zeros(10, dtype=torch.long)), tmp_path,
                                     device="cpu")
    with torch.no_grad():
        want = teacher(x)
    assert torch.allclose(cache.rows([9, 0, -1]), want[[9, 0, 9]], atol=1e-6)
    assert torch.allclose(cache.rows(torch.tensor([3, 3], dtype=torch.int32)), want[[3, 3]], atol=1e-6)
    assert cache.rows(2).shape == (3,)
    rows = cache.rows(torch.arange(10))
    rows += 1  # the caller's copy: the cache itself is unchanged
    assert torch.allclose(cache.rows(torch.arange(10)), want, atol=1e-6)
    with pytest.raises(IndexError, match="out of range for a teacher cache of 10 rows"):
        cache.rows([10])


class TaggingDataModule(L.LightningDataModule):
    """A user's DataModule with its own transfer hook: it must keep working under our module."""

    def __init__(self):
        super().__init__()
        self.moved = 0

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,))), batch_size=8)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        self.moved += 1
        return [t.to(device) for t in batch]


def test_a_datamodule_transfer_hook_still_wins_and_ours_warns_nothing(tmp_path):
    from lightning.pytorch.trainer.connectors import data_connector

    def fit(datamodule):
        data_connector.warning_cache.clear()  # Lightning warns once per process; start afresh
        trainer = one_epoch_trainer(tmp_path)
        with warnings.catch_warnings(record=True) as seen:
            quiet_lightning_notes()  # pytest drops filters installed while it imports test modules
            trainer.fit(ClassifierModule(nn.Linear(4, 3)), datamodule=datamodule)
        return [str(w.message) for w in seen if "transfer_batch_to_device" in str(w.message)]

    dm = TaggingDataModule()
    assert fit(dm) == [] and dm.moved == 4
    plain = L.LightningDataModule.from_datasets(TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,))),
                                                batch_size=8)
    assert fit(plain) == []


def test_lightning_still_sees_the_current_hook_name(tmp_path):
    class Recording(ClassifierModule):
        seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(self._current_fx_name)
            return super().training_step(batch, batch_idx)

    module = Recording(nn.Linear(4, 3))
    assert "_current_fx_name" not in module._parameters and "_current_fx_name" not in module._modules
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,))), batch_size=8)
    one_epoch_trainer(tmp_path).fit(module, train_dataloaders=data)
    assert Recording.seen == ["training_step", "training_step"]
    assert module._current_fx_name is None  # Lightning resets it after the hooks
