"""The per-step shortcuts taken for speed give the same results as the general paths they bypass."""
from __future__ import annotations

import functools
import io

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning import ClassifierModule
from kd_lightning.cache import TeacherOutputCache
from kd_lightning.app.progress import ThrottledRichProgressBar


def one_epoch_trainer(tmp_path, **kw) -> L.Trainer:
    opts = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                enable_model_summary=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    return L.Trainer(**{**opts, **kw})


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
