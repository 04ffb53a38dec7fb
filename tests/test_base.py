"""kd_lightning/base.py: what every family module shares — one definition of the checkpoint hooks and the
optimizer, the loss-family refusal, trainable parameters, total steps for the scheduler, loss adapters
built through public hooks only (also when fitting on plain loaders), the finite-loss check for LMs, and a
drop-in fit that draws no warning about the frozen teacher's eval mode."""
from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import MLP, loader, make_data, state_hash, warmed_teacher
from kd_lightning import CausalLMDistillationModule, DistillationModule
from kd_lightning.base import TeacherStudentModule
from kd_lightning.losses import KD, Compose, FitNet, HiddenStates, TokenKD
from kd_lightning.mutual import MutualLearningModule
from lm.helpers import TinyLM, ragged_batch, rows

PACKAGE = Path(__file__).resolve().parents[1] / "kd_lightning"


def test_shared_definitions_exist_once_in_the_package():
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    for pattern in (r"^\s*def configure_optimizers\(", r"^\s*def on_save_checkpoint\(",
                    r"^\s*def on_load_checkpoint\(", r"^\s*TEACHER_PREFIX\s*="):
        where = [str(p.relative_to(PACKAGE)) for p, s in sources.items() if re.search(pattern, s, re.M)]
        assert where == ["base.py"], (pattern, where)
    for cls in (DistillationModule, CausalLMDistillationModule, MutualLearningModule):
        assert issubclass(cls, TeacherStudentModule)


def test_a_module_refuses_a_loss_of_the_other_family_in_one_line():
    with pytest.raises(TypeError) as err:
        DistillationModule(MLP(), MLP(), loss=TokenKD())
    message = str(err.value)
    assert "\n" not in message and "'classifier'" in message and "'token'" in message and "TokenKD" in message
    with pytest.raises(TypeError) as err:
        CausalLMDistillationModule(TinyLM(seed=1), TinyLM(seed=2), loss=KD())
    message = str(err.value)
    assert "\n" not in message and "'classifier'" in message and "'token'" in message and "KD" in message


def test_compose_refuses_mixed_families_and_keeps_the_common_one():
    with pytest.raises(TypeError, match=r"mixes loss families: KD \('classifier'\), TokenKD \('token'\)"):
        Compose([KD(), TokenKD()])
    hidden = HiddenStates(student_layers="mix", teacher_layers="mix")
    assert Compose([TokenKD(), hidden]).families == ("token",)
    assert Compose([KD(), hidden]).families == ("classifier",)


def test_frozen_parameters_stay_out_of_the_optimizer():
    student = MLP()
    student.body[0].requires_grad_(False)  # a frozen first layer
    module = DistillationModule(student, MLP(), loss=KD())
    optimizer = module.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in student.parameters() if p.requires_grad}
    assert not optimized & {id(p) for p in student.body[0].parameters()}
    assert not optimized & {id(p) for p in module.teacher.parameters()}


class RecordTotal:
    """A scheduler factory that takes total_steps (left unset) and records what it got."""

    def __init__(self):
        self.total = None

    def __call__(self, optimizer, total_steps=None):
        self.total = total_steps
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def test_both_families_get_the_fits_total_steps(make_trainer):
    x, y = make_data()
    record = RecordTotal()
    module = DistillationModule(MLP(), MLP(), loss=KD(), scheduler=record, scheduler_interval="step")
    make_trainer(max_epochs=2, max_steps=-1, limit_val_batches=0).fit(module, train_dataloaders=loader(x, y, batch_size=16))
    assert record.total == 2 * len(x) // 16
    record = RecordTotal()
    lm = CausalLMDistillationModule(TinyLM(seed=2), TinyLM(seed=1), scheduler=record)
    data = DataLoader(rows(ragged_batch([12, 9, 5, 7])), batch_size=2)
    make_trainer(max_steps=3, limit_val_batches=0).fit(lm, train_dataloaders=data)
    assert record.total == 3


class FirstStepAdapters(L.Callback):
    """Copies the loss's adapter parameters as the first step starts (after they were built)."""

    def __init__(self):
        self.start = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start is None:
            self.start = [p.detach().clone() for p in pl_module.loss.parameters()]


def test_adapters_built_from_plain_loaders_are_trained(make_trainer):
    """fit(module, train_dataloaders=...) has no datamodule: the adapters are built from the first batch at
    on_train_start and the optimizer is made again so that it holds them, and trains them."""
    x, y = make_data()
    fitnet = FitNet(student_layers="body.2", teacher_layers="body.2")  # widths 32 -> 48: a real adapter
    module = DistillationModule(MLP(hidden=32), MLP(hidden=48), loss=Compose([KD(), fitnet]),
                                optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    spy = FirstStepAdapters()
    trainer = make_trainer(max_steps=3, limit_val_batches=0, callbacks=[spy])
    trainer.fit(module, train_dataloaders=loader(x, y))
    assert not fitnet.needs_build and len(spy.start) > 0
    held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in fitnet.adapters.parameters()} <= held
    assert all(not torch.equal(a, b) for a, b in zip(spy.start, fitnet.adapters.parameters()))


def test_adapters_from_several_plain_loaders_are_refused_in_one_line(make_trainer):
    x, y = make_data()
    module = DistillationModule(MLP(hidden=32), MLP(hidden=48),
                                loss=Compose([KD(), FitNet(student_layers="body.2", teacher_layers="body.2")]))
    with pytest.raises(ValueError, match="got 2 training loaders; fit with a datamodule or set module.example_input"):
        make_trainer(max_steps=1, limit_val_batches=0).fit(module, train_dataloaders=[loader(x, y), loader(x, y)])


def test_a_broken_training_loader_is_not_hidden(make_trainer):
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            raise OSError(f"sample {i} is unreadable")

    module = DistillationModule(MLP(hidden=32), MLP(hidden=48),
                                loss=Compose([KD(), FitNet(student_layers="body.2", teacher_layers="body.2")]))
    with pytest.raises(OSError, match="sample 0 is unreadable"):
        make_trainer(max_steps=1, limit_val_batches=0).fit(module, train_dataloaders=DataLoader(Broken()))


def test_a_non_finite_lm_loss_stops_training_naming_the_term(make_trainer):
    teacher = TinyLM(seed=1)
    with torch.no_grad():
        teacher.head.bias.fill_(float("nan"))
    module = CausalLMDistillationModule(TinyLM(seed=2), teacher, loss=TokenKD(ce_weight=0.5, kd_weight=0.5))
    data = DataLoader(rows(ragged_batch([12, 9, 5, 7])), batch_size=2)
    with pytest.raises(FloatingPointError, match=r"non-finite at global step \d+ .*bad term\(s\): '(ce|kd)'"):
        make_trainer(max_steps=2, limit_val_batches=0).fit(module, train_dataloaders=data)


def test_mutual_learning_checkpoints_and_logs_through_the_base(make_trainer, tmp_path):
    x, y = make_data()
    module = MutualLearningModule([MLP(), MLP()])
    trainer = make_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader(x, y))
    assert {"train/loss", "train/ce_0", "train/kd_1"} <= set(trainer.callback_metrics)
    path = tmp_path / "cohort.ckpt"
    trainer.save_checkpoint(path)
    restored = MutualLearningModule.load_from_checkpoint(path, students=[MLP(), MLP()])
    for a, b in zip(module.students.parameters(), restored.students.parameters()):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------- a drop-in fit and the teacher's mode
class TeacherModes(L.Callback):
    """Whether any teacher module is in train mode at each training and validation step."""

    def __init__(self):
        self.train, self.val = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train.append(any(m.training for m in pl_module.teacher.modules()))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.append(any(m.training for m in pl_module.teacher.modules()))


class PlainData(L.LightningDataModule):
    def __init__(self, rows_):
        super().__init__()
        self.rows = rows_

    def train_dataloader(self):
        return DataLoader(self.rows, batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.rows, batch_size=8)


def drop_in_modules():
    x, y = make_data()
    yield "classifier", DistillationModule(MLP(), warmed_teacher(), loss=KD()), list(zip(x, y))
    lm = rows(ragged_batch([12, 10, 8, 12, 11, 9, 12, 7]))
    yield "causal_lm", CausalLMDistillationModule(TinyLM(seed=1), TinyLM(seed=2), loss=TokenKD()), lm


def drop_in_fit(module, rows_, tmp_path, probe):
    """A user's plain Trainer (sanity check on), quiet only where the test does not look."""
    trainer = L.Trainer(max_steps=3, accelerator="cpu", default_root_dir=str(tmp_path), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[probe])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer.fit(module, PlainData(rows_))
    return [w for w in seen if "eval mode" in str(w.message) or "kd_lightning" in w.filename]


@pytest.mark.parametrize("family", ["classifier", "causal_lm"])
def test_a_drop_in_fit_warns_nothing_about_the_frozen_teacher(family, tmp_path):
    name, module, rows_ = next(m for m in drop_in_modules() if m[0] == family)
    teacher_state, probe = state_hash(module.teacher), TeacherModes()
    caused = drop_in_fit(module, rows_, tmp_path, probe)
    assert caused == [], [str(w.message) for w in caused]
    # ...and the teacher was in eval mode at every step, validation included, and after the fit, and unchanged
    assert len(probe.train) == 3 and not any(probe.train) and probe.val and not any(probe.val)
    assert not any(m.training for m in module.teacher.modules())
    assert state_hash(module.teacher) == teacher_state
    assert all(not p.requires_grad and p.grad is None for p in module.teacher.parameters())


def test_a_student_left_in_eval_mode_is_still_reported_and_only_it(tmp_path):
    x, y = make_data()
    student = MLP().eval()  # e.g. a model fresh from from_pretrained
    module = DistillationModule(student, warmed_teacher(), loss=KD())
    caused = drop_in_fit(module, list(zip(x, y)), tmp_path, TeacherModes())
    assert [str(w.message).split(" module")[0] for w in caused] == [f"Found {len(list(student.modules()))}"]
