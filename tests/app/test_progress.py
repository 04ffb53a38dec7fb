"""kd_lightning/app/progress.py: the throttled Rich progress bar redraws at most at its rate, and at every epoch end."""
from __future__ import annotations

import functools
import io

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning import ClassifierModule
from kd_lightning.app.progress import ThrottledRichProgressBar


def test_throttled_bar_updates_at_most_at_its_rate_and_always_at_an_epoch_end(make_trainer, monkeypatch):
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
    trainer = make_trainer(max_epochs=2, max_steps=-1, enable_progress_bar=True, callbacks=[bar])
    module = ClassifierModule(nn.Linear(4, 3), optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    trainer.fit(module, train_dataloaders=data)
    assert shown.count(29) == 2  # each epoch's last batch reaches the bar
    assert shown[0] == 0 and len(shown) < 10  # the first does too; most batches do not
    assert bar.progress.tasks[bar.train_progress_bar_id].completed == 30


