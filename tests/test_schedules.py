"""Learning-rate schedules sized to the whole fit (kd_lightning/schedules.py)."""
from __future__ import annotations

import functools
from typing import List

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning import ClassifierModule
from kd_lightning.schedules import warmup_cosine

N, B = 32, 8


class LrTrace(L.Callback):
    def __init__(self):
        self.lrs: List[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup=0.1, final_lr_ratio=0.01)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(110):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup over 10 steps
    assert lrs[55] == pytest.approx(0.01 + 0.99 * 0.5)  # half-way through the cosine
    assert lrs[100] == pytest.approx(0.01) and lrs[110] == pytest.approx(0.01)  # held at the end
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(opt)


def test_one_cycle_gets_the_fit_length_too(make_trainer):
    sched = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1)
    module = ClassifierModule(nn.Linear(8, 4), optimizer=functools.partial(torch.optim.SGD, lr=0.1), scheduler=sched,
                              scheduler_interval="step")
    trace = LrTrace()
    data = DataLoader(TensorDataset(torch.randn(N, 8), torch.randint(0, 4, (N,))), batch_size=B)
    make_trainer(callbacks=[trace], max_epochs=2, max_steps=-1).fit(module, data)  # would raise past total_steps
    assert len(trace.lrs) == 2 * N // B and trace.lrs[-1] < 0.1 * max(trace.lrs)
