"""kd_lightning/callbacks.py: the finite-loss check and the train-term logger read tensor values only every N-th
step (no device syncs in ordinary steps), name the step and term of a non-finite loss, and log window means."""
from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Dict, List

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import C, D, small_data, small_nets
from kd_lightning import DistillationModule
from kd_lightning.callbacks import FiniteLossCheck, TrainTermLogger
from kd_lightning.losses import KD



# ------------------------------------------------------------------------------ no per-step syncs
SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__")


def test_ordinary_training_steps_never_wait_for_the_device(make_trainer, monkeypatch):
    """Only every N-th step (finite check, logging) reads a tensor value on the host."""
    counts: Dict[int, int] = {}
    state = {"step": None}
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counting(self, *a, __original=original, **k):
            if state["step"] is not None:
                counts[state["step"]] = counts.get(state["step"], 0) + 1
            return __original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def counted(fn, step_of):
        def wrapper(*args, **kw):
            state["step"] = step_of(*args)
            try:
                return fn(*args, **kw)
            finally:
                state["step"] = None
        return wrapper

    # Our code in each step: the module's step functions and the two step callbacks (Lightning's own
    # bookkeeping is not ours to count).
    monkeypatch.setattr(DistillationModule, "training_step",
                        counted(DistillationModule.training_step, lambda self, *a: self.global_step))
    monkeypatch.setattr(DistillationModule, "validation_step",
                        counted(DistillationModule.validation_step, lambda *a: -1))
    monkeypatch.setattr(TrainTermLogger, "on_train_batch_end",
                        counted(TrainTermLogger.on_train_batch_end, lambda self, trainer, *a: trainer.global_step - 1))
    monkeypatch.setattr(FiniteLossCheck, "on_before_backward",
                        counted(FiniteLossCheck.on_before_backward, lambda self, trainer, *a: trainer.global_step))

    teacher, student = small_nets()
    module = DistillationModule(student, teacher, loss=KD(), finite_check_interval=4)
    x, y = small_data(64)
    make_trainer(max_steps=-1, max_epochs=1, log_every_n_steps=4, limit_val_batches=2).fit(
        module, DataLoader(TensorDataset(x, y), batch_size=4), DataLoader(TensorDataset(x, y), batch_size=8))
    # 16 steps: 0 checks the label range once; 3, 7, 11, 15 test finiteness and log
    quiet_steps = [s for s in range(1, 16) if (s + 1) % 4]
    assert all(counts.get(s, 0) == 0 for s in quiet_steps), counts
    assert all(counts.get(s, 0) >= 1 for s in (3, 7, 11, 15)), counts
    assert counts.get(-1, 0) == 0, "validation steps must not sync either"


def test_non_finite_loss_is_reported_with_its_step_and_term(make_trainer):
    class NaNAt(nn.Module):
        def __init__(self, bad_step):
            super().__init__()
            self.lin, self.calls, self.bad = nn.Linear(D, C), 0, bad_step

        def forward(self, x):
            self.calls += 1
            out = self.lin(x)
            return out * float("nan") if self.calls == self.bad + 1 else out

    x, y = small_data(64)
    teacher, student = NaNAt(bad_step=5), small_nets()[0]
    module = DistillationModule(student, teacher, loss=KD(), finite_check_interval=4)
    with pytest.raises(FloatingPointError, match=r"non-finite at global step 5 .*'kd'"):
        make_trainer(max_steps=20).fit(module, DataLoader(TensorDataset(x, y), batch_size=4))
    # the default on the CPU tests every step (free there): the error comes at the bad step itself
    teacher = NaNAt(bad_step=2)
    module = DistillationModule(small_nets()[0], teacher, loss=KD())
    with pytest.raises(FloatingPointError, match=r"global step 2 \(now at step 2"):
        make_trainer(max_steps=20).fit(module, DataLoader(TensorDataset(x, y), batch_size=4))
    with pytest.raises(ValueError, match="finite_check_interval"):
        DistillationModule(small_nets()[0], finite_check_interval=0)


def test_train_terms_are_logged_as_window_means(tmp_path, make_trainer):
    losses: List[float] = []

    class Rec(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    teacher, student = small_nets()
    x, y = small_data(32)
    module = DistillationModule(student, teacher, loss=KD(), optimizer=functools.partial(torch.optim.SGD, lr=0.5))
    logger = L.pytorch.loggers.CSVLogger(str(tmp_path), name="csv", version="v")
    make_trainer(max_steps=16, log_every_n_steps=4, logger=logger, callbacks=[Rec()]).fit(
        module, DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True))
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(rows) == 4
    for i, row in enumerate(rows):
        window = losses[4 * i: 4 * i + 4]
        assert float(row["train/loss"]) == pytest.approx(sum(window) / 4, rel=1e-5)
        assert "train/kd" in row and row["train/kd"] != ""


