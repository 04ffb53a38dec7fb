"""Exact resume at the library level: a fit stopped by SIGTERM (mid-epoch, after an epoch's last batch, at an
epoch's end) and continued from its checkpoint ends bit for bit like the fit never stopped, when the training
loader draws from a ResumableSampler and ExactResume is among the callbacks; and a fresh run's order is
shuffle=True's."""
from __future__ import annotations

import os
import random
import signal

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning.exact_resume import ExactResume, ResumableSampler, ResumeAt

BATCHES = 5  # training batches an epoch


class Noisy(L.LightningModule):
    """Dropout and draws from torch's, numpy's and Python's global generators in every step."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
        self.seen, self.val_losses = [], []

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x + 0.1 * torch.randn_like(x) + float(np.random.rand()) + random.random()
        self.seen.append(y.tolist())
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self.net(x), y))

    def on_validation_epoch_end(self):
        self.val_losses.append(float(self.trainer.callback_metrics["val/loss"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class Data(L.LightningDataModule):
    def __init__(self, resumable: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.ds = TensorDataset(torch.randn(8 * BATCHES, 8, generator=g), torch.arange(8 * BATCHES) % 3)
        self.resumable = resumable

    def train_dataloader(self):
        if self.resumable:
            return DataLoader(self.ds, batch_size=8, sampler=ResumableSampler(self.ds))
        return DataLoader(self.ds, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=20)


class StopAt(L.Callback):
    """SIGTERM to this process after training step ``step`` (or at the end of the epoch it ends); Lightning
    stops the fit there, and the checkpoint is written as kd-train writes it (on the SIGTERM exception)."""

    def __init__(self, step: int, path, at_epoch_end: bool = False):
        self.step, self.path, self.at_epoch_end = step, path, at_epoch_end

    def on_train_batch_end(self, trainer, *args):
        if not self.at_epoch_end and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_epoch_end(self, trainer, *args):
        if self.at_epoch_end and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)


def fit(make_trainer, callbacks=(), ckpt_path=None, resumable=True):
    L.seed_everything(1, verbose=False)
    module = Noisy()
    trainer = make_trainer(max_epochs=3, max_steps=-1, callbacks=[ExactResume(), *callbacks])
    try:
        trainer.fit(module, datamodule=Data(resumable), ckpt_path=ckpt_path)
    except SIGTERMException:
        pass
    return module, trainer


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    trainer_dir = tmp_path_factory.mktemp("unbroken")
    module, trainer = fit(lambda **kw: L.Trainer(**_quiet(trainer_dir), **kw))
    return module, {k: float(v) for k, v in trainer.callback_metrics.items()}


def _quiet(root):
    return dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=str(root))


@pytest.mark.parametrize("step,at_epoch_end", [(2, False), (BATCHES, False), (BATCHES, True), (BATCHES + 2, False)],
                         ids=["mid-epoch", "after-the-epochs-last-batch", "at-the-epochs-end", "mid-second-epoch"])
def test_a_stopped_and_resumed_fit_ends_bit_for_bit_like_the_unbroken_one(make_trainer, tmp_path, unbroken, step,
                                                                         at_epoch_end):
    ref, ref_metrics = unbroken
    ckpt = tmp_path / "stopped.ckpt"
    first, _ = fit(make_trainer, [StopAt(step, ckpt, at_epoch_end)])
    assert len(first.seen) == step and ckpt.is_file()
    second, trainer = fit(make_trainer, ckpt_path=str(ckpt))
    assert first.seen + second.seen == ref.seen  # the same batches in the same order
    assert same_weights(second, ref)
    assert {k: float(v) for k, v in trainer.callback_metrics.items()} == ref_metrics
    if not (step == BATCHES and not at_epoch_end):  # there the epoch's validation was cut short: Lightning
        assert first.val_losses + second.val_losses == ref.val_losses  # does not run it again


def test_without_the_resumable_sampler_the_rest_of_the_epoch_comes_in_another_order(make_trainer, tmp_path, unbroken):
    ref, _ = unbroken
    plain, _ = fit(make_trainer, resumable=False)
    assert plain.seen == ref.seen and same_weights(plain, ref)  # a fresh run: shuffle=True's order exactly
    ckpt = tmp_path / "stopped.ckpt"
    first, _ = fit(make_trainer, [StopAt(2, ckpt)], resumable=False)
    second, _ = fit(make_trainer, ckpt_path=str(ckpt), resumable=False)
    assert first.seen + second.seen != ref.seen and not same_weights(second, ref)


def test_the_sampler_draws_as_shuffle_true_and_resumes_a_pass_without_drawing():
    ds = list(range(10))
    torch.manual_seed(3)
    plain = [list(DataLoader(ds, batch_size=3, shuffle=True)) for _ in range(2)]
    after_plain = torch.get_rng_state()
    torch.manual_seed(3)
    sampler = ResumableSampler(ds)
    ours = [list(DataLoader(ds, batch_size=3, sampler=sampler)) for _ in range(2)]
    assert [[b.tolist() for b in e] for e in ours] == [[b.tolist() for b in e] for e in plain]
    assert torch.equal(torch.get_rng_state(), after_plain) and sampler.passes == 2
    last_pass = torch.randperm(10, generator=torch.Generator().manual_seed(sampler.seed)).tolist()
    sampler.resume_at = ResumeAt(sampler.seed, 4)
    state = torch.get_rng_state()
    assert list(sampler) == last_pass[4:] and torch.equal(torch.get_rng_state(), state)
    assert sampler.resume_at is None  # one pass only: the next is drawn anew
