"""DistillationModule (kd_lightning/module.py) driven through a real lightning.Trainer: the frozen teacher and the
optimizer, checkpoints, logged metrics, class-count and NaN checks, precision and DDP, labels-only runs, the
speed flags (channels_last, compile) and the batch_transform hook."""
from __future__ import annotations

import math
import os
from typing import Dict, List

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import (IN_FEATURES, MLP, N, NUM_CLASSES, DictDataset, Probe, accuracy, hparams_are_plain, loader,
                     make_data, params, same_state, sgd, small_data, small_nets, snapshot, state_hash, warmed_teacher)
from kd_lightning import DistillationModule
from kd_lightning.losses import CE, KD, DistillInputs, Loss
from kd_lightning.losses import functional as KF
from kd_lightning.teacher import FrozenTeacher




class NaNTeacher(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.fc = nn.Linear(IN_FEATURES, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * float("nan")


class ExplodingTeacher(nn.Module):
    """A teacher that must never be called (the batch carries cached teacher logits)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN_FEATURES, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        raise AssertionError("the teacher network ran although the batch carried teacher logits")


class AdaptedKD(Loss):
    """KD through a trainable adapter on the student logits: an objective that owns parameters."""

    def __init__(self, temperature: float = 4.0, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.temperature = temperature
        self.adapter = nn.Linear(num_classes, num_classes)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        ce = F.cross_entropy(inputs.student_logits.float(), inputs.target)
        kd = KF.kd_loss(self.adapter(inputs.student_logits.float()), inputs.teacher_logits, self.temperature)
        return {"loss": 0.5 * ce + kd, "ce": ce, "kd": kd}


class ShapeBlind(Loss):
    """Uses the teacher logits without looking at their class dimension (only the module can catch a mismatch)."""

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        ce = F.cross_entropy(inputs.student_logits.float(), inputs.target)
        return {"loss": ce + 0.0 * inputs.teacher_logits.sum(), "ce": ce}


pytestmark = pytest.mark.usefixtures("seeded")


# ================================================================ 1-2. teacher invariants, optimizer
def test_teacher_frozen_and_student_trained(make_trainer, data):
    x, y = data
    teacher = warmed_teacher()
    student = MLP(hidden=16)
    loss = AdaptedKD()
    module = DistillationModule(student, teacher, loss=loss, optimizer=sgd())
    teacher_hash, student_before = state_hash(module.teacher), snapshot(student)
    adapter_before = snapshot(loss)
    assert not bool(torch.equal(teacher.body[1].running_mean, torch.zeros(48)))  # the check is meaningful

    probe = Probe()
    trainer = make_trainer(callbacks=[probe], max_epochs=2, max_steps=-1)
    trainer.fit(module, loader(x, y, shuffle=True), loader(x, y))

    assert probe.optimizer_steps == 8
    # weights and BatchNorm running statistics untouched, no gradients, no requires_grad
    assert state_hash(module.teacher) == teacher_hash
    for p in module.teacher.parameters():
        assert p.grad is None and not p.requires_grad
    # eval mode during every training step and after fit, even after the user calls .train()
    assert probe.teacher_any_training and not any(probe.teacher_any_training)
    assert all(probe.student_training)
    assert not any(m.training for m in module.teacher.net.modules())
    module.train()
    assert module.student.training
    assert not any(m.training for m in module.teacher.modules())
    module.teacher.train(True)
    module.teacher.net.train()  # even the inner net's own .train() is undone by the next module.train()
    module.train()
    assert not any(m.training for m in module.teacher.modules())

    # the optimizer holds exactly the student's and the objective's parameters, never the teacher's
    in_opt = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not in_opt & {id(p) for p in module.teacher.parameters()}
    expected = {id(p) for p in student.parameters()} | {id(p) for p in loss.parameters()}
    assert in_opt == expected
    assert len(list(loss.parameters())) == 2
    # ... and they were trained
    assert not torch.equal(student_before["head.weight"], student.head.weight)
    assert not torch.equal(student_before["body.1.running_mean"], student.body[1].running_mean)
    assert not torch.equal(adapter_before["adapter.weight"], loss.adapter.weight)


def test_trainable_parameters_excludes_teacher_even_if_user_unfreezes_nothing():
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher)
    ids = {id(p) for p in module.trainable_parameters()}
    assert ids == {id(p) for p in module.student.parameters()}
    assert isinstance(module.teacher, FrozenTeacher)
    assert all(not p.requires_grad for p in teacher.parameters())


def test_checkpoint_excludes_teacher_and_restores_student(tmp_path, make_trainer, data):
    x, y = data
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher, loss=AdaptedKD(), optimizer=sgd(),
                                input_key=None, ensemble_mode="probs")
    ckpt_cb = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    trainer = make_trainer(callbacks=[ckpt_cb], enable_checkpointing=True, max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    manual = tmp_path / "manual.ckpt"
    trainer.save_checkpoint(str(manual))

    for path in (ckpt_cb.last_model_path, str(manual)):
        assert os.path.isfile(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        keys = list(ckpt["state_dict"])
        assert not [k for k in keys if k.startswith("teacher.")], keys
        assert any(k.startswith("student.") for k in keys)
        assert "loss.adapter.weight" in keys  # the objective's trainable part is kept
        hp = ckpt["hyper_parameters"]
        assert hparams_are_plain(hp), hp
        for name in ("student", "teacher", "loss", "optimizer", "scheduler", "teacher_architecture"):
            assert name not in hp

    # the live module still has its teacher (the filter touches only the saved copy)
    assert any(k.startswith("teacher.") for k in module.state_dict())

    fresh_student, fresh_loss = MLP(hidden=16), AdaptedKD()
    restored = DistillationModule.load_from_checkpoint(str(manual), student=fresh_student, teacher=warmed_teacher(),
                                                       loss=fresh_loss)
    assert restored.student is fresh_student
    assert same_state(snapshot(restored.student), snapshot(module.student))
    assert same_state(snapshot(restored.loss), snapshot(module.loss))
    assert state_hash(restored.teacher) == state_hash(module.teacher)
    assert restored.hparams.ensemble_mode == "probs"


def test_checkpoint_is_loadable_with_weights_only(tmp_path, make_trainer, data):
    """Plain hyperparameters keep the checkpoint readable by torch.load(weights_only=True)."""
    x, y = data
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    trainer = make_trainer(max_steps=2)
    trainer.fit(module, loader(x, y))
    path = tmp_path / "w.ckpt"
    trainer.save_checkpoint(str(path))
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    assert "student.head.weight" in ckpt["state_dict"]


def test_checkpoint_with_save_teacher(tmp_path, make_trainer, data):
    x, y = data
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher, optimizer=sgd(), save_teacher=True)
    trainer = make_trainer(max_steps=2)
    trainer.fit(module, loader(x, y))
    path = tmp_path / "with_teacher.ckpt"
    trainer.save_checkpoint(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=False)["state_dict"]
    teacher_keys = {k for k in state if k.startswith("teacher.")}
    assert teacher_keys == {"teacher." + k for k in module.teacher.state_dict()}
    assert torch.equal(state["teacher.net.body.1.running_mean"], teacher.body[1].running_mean)

    # a different teacher object at load time gets the saved teacher's weights
    other = warmed_teacher(seed=7)
    restored = DistillationModule.load_from_checkpoint(str(path), student=MLP(hidden=16), teacher=other)
    assert restored.hparams.save_teacher is True
    assert state_hash(restored.teacher) == state_hash(module.teacher)
    assert same_state(snapshot(restored.student), snapshot(module.student))


def test_save_teacher_checkpoint_loads_into_student_only_module(tmp_path, make_trainer, data):
    """Evaluating a student from a save_teacher=True checkpoint must not require rebuilding the teacher."""
    x, y = data
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd(), save_teacher=True)
    trainer = make_trainer(max_steps=2)
    trainer.fit(module, loader(x, y))
    path = tmp_path / "with_teacher.ckpt"
    trainer.save_checkpoint(str(path))
    restored = DistillationModule.load_from_checkpoint(str(path), student=MLP(hidden=16), teacher=None, loss=CE())
    assert restored.teacher is None
    assert same_state(snapshot(restored.student), snapshot(module.student))


def test_resume_from_checkpoint(tmp_path, make_trainer, data):
    x, y = data
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher, optimizer=sgd())
    trainer = make_trainer(max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    path = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(str(path))
    assert trainer.global_step == 4

    resumed = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    teacher_hash = state_hash(resumed.teacher)
    probe = Probe()
    trainer2 = make_trainer(callbacks=[probe], max_epochs=2, max_steps=-1)
    trainer2.fit(resumed, loader(x, y), loader(x, y), ckpt_path=str(path))
    assert trainer2.global_step == 8
    assert probe.optimizer_steps == 4  # only the second epoch ran
    assert state_hash(resumed.teacher) == teacher_hash
    assert not any(m.training for m in resumed.teacher.net.modules())
    assert "val/acc" in trainer2.callback_metrics


def test_the_running_best_travels_in_checkpoints_and_older_ones_still_load(tmp_path, make_trainer, data):
    x, y = data
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    trainer = make_trainer(max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    best = float(module.val_acc_best.compute())
    path = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(str(path))
    restored = DistillationModule.load_from_checkpoint(str(path), student=MLP(hidden=16), teacher=warmed_teacher())
    assert float(restored.val_acc_best.max_value) == best  # a resumed fit logs the same val/acc_best
    # A checkpoint written before the running best was kept loads strictly, with none seen yet.
    blob = torch.load(path, weights_only=False)
    del blob["state_dict"]["val_acc_best.max_value"]
    torch.save(blob, path)
    older = DistillationModule.load_from_checkpoint(str(path), student=MLP(hidden=16), teacher=warmed_teacher())
    assert float(older.val_acc_best.max_value) == float("-inf")


def test_logged_metrics_and_their_values(make_trainer, data):
    x, y = data
    xv, yv = make_data(n=40, seed=3)
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher, loss=KD(temperature=4.0), optimizer=sgd())
    trainer = make_trainer(max_epochs=2, max_steps=-1, num_sanity_val_steps=1)
    trainer.fit(module, loader(x, y), loader(xv, yv, batch_size=16))
    m = trainer.callback_metrics
    for key in ("train/loss", "train/ce", "train/kd", "val/acc", "val/acc_best", "val/acc_top5",
                "val/teacher_acc", "val/agreement", "val/loss", "val/kd", "val/ce"):
        assert key in m, (key, sorted(m))
        assert math.isfinite(float(m[key])), key

    module.eval()
    with torch.no_grad():
        s, t = module.student(xv), teacher(xv)
    assert float(m["val/acc"]) == pytest.approx(accuracy(s, yv), abs=1e-6)
    assert float(m["val/teacher_acc"]) == pytest.approx(accuracy(t, yv), abs=1e-6)
    assert float(m["val/agreement"]) == pytest.approx(float((s.argmax(-1) == t.argmax(-1)).float().mean()), abs=1e-6)
    top5 = (s.topk(5, -1).indices == yv[:, None]).any(-1).float().mean()
    assert float(m["val/acc_top5"]) == pytest.approx(float(top5), abs=1e-6)
    kd = KF.kd_loss(s, t, 4.0)
    assert float(m["val/kd"]) == pytest.approx(float(kd), rel=1e-4)  # batches 16,16,8: a per-sample mean
    assert float(m["val/ce"]) == pytest.approx(float(F.cross_entropy(s, yv)), rel=1e-4)
    assert float(m["val/acc_best"]) >= float(m["val/acc"]) - 1e-6

    results = trainer.test(module, loader(xv, yv), verbose=False)
    assert results[0]["test/acc"] == pytest.approx(accuracy(s, yv), abs=1e-6)
    for key in ("test/acc", "test/acc_top5", "test/teacher_acc", "test/agreement", "test/loss"):
        assert key in results[0], (key, results[0])


def test_val_loss_is_a_per_sample_mean_over_uneven_batches(make_trainer):
    """Batches of 16, 16 and 8 samples: val/loss must weigh each batch by its size, like val/kd and val/ce."""
    xv, yv = make_data(n=40, seed=3)
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher, loss=KD(temperature=4.0))
    results = make_trainer().validate(module, loader(xv, yv, batch_size=16), verbose=False)[0]
    module.eval()
    with torch.no_grad():
        s, t = module.student(xv), teacher(xv)
        per_batch = [float(0.1 * F.cross_entropy(s[i:i + 16], yv[i:i + 16]) + 0.9 * KF.kd_loss(s[i:i + 16], t[i:i + 16]))
                     for i in (0, 16, 32)]
    weighted = (16 * per_batch[0] + 16 * per_batch[1] + 8 * per_batch[2]) / 40
    unweighted = sum(per_batch) / 3
    assert abs(weighted - unweighted) > 1e-4  # the data make the two means distinguishable
    assert results["val/loss"] == pytest.approx(weighted, rel=1e-5)
    assert results["val/loss"] == pytest.approx(0.1 * results["val/ce"] + 0.9 * results["val/kd"], rel=1e-5)


def test_val_acc_best_is_the_maximum_over_epochs(make_trainer, data):
    x, y = data
    accs: List[float] = []

    class Rec(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                accs.append(float(trainer.callback_metrics["val/acc"]))

    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd(0.3))
    trainer = make_trainer(callbacks=[Rec()], max_epochs=3, max_steps=-1, num_sanity_val_steps=2)
    # the sanity-check accuracy (before training) must not count towards the best
    trainer.fit(module, loader(x, y, batch_size=32), loader(x, y, batch_size=32))
    assert len(accs) == 3
    assert float(trainer.callback_metrics["val/acc_best"]) == pytest.approx(max(accs), abs=1e-6)
    if hasattr(module, "val_history"):
        assert module.val_history == pytest.approx(accs, abs=1e-6)


def test_top5_only_with_more_than_five_classes(make_trainer):
    x, y = make_data(num_classes=4)
    module = DistillationModule(MLP(hidden=16, num_classes=4), warmed_teacher(num_classes=4), optimizer=sgd())
    trainer = make_trainer(max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    m = trainer.callback_metrics
    assert "val/acc" in m and "val/teacher_acc" in m
    assert "val/acc_top5" not in m
    results = trainer.test(module, loader(x, y), verbose=False)
    assert "test/acc" in results[0] and "test/acc_top5" not in results[0]


def test_train_metrics_reach_a_csv_logger(tmp_path, make_trainer, data):
    from lightning.pytorch.loggers import CSVLogger

    x, y = data
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = make_trainer(logger=logger, log_every_n_steps=1, max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    for key in ("train/loss", "train/ce", "train/kd", "val/acc", "val/acc_best"):
        assert key in trainer.logged_metrics, (key, sorted(trainer.logged_metrics))
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        header = f.readline()
    assert "train/kd" in header and "val/agreement" in header


def test_predict_step_returns_student_logits(make_trainer, data):
    x, y = data
    module = DistillationModule(MLP(hidden=16), warmed_teacher(num_classes=NUM_CLASSES), optimizer=sgd())
    make_trainer(max_steps=2).fit(module, loader(x, y))
    preds = make_trainer().predict(module, DataLoader(TensorDataset(x), batch_size=16))
    module.eval()
    with torch.no_grad():
        expected = module.student(x)
    out = torch.cat(preds)
    assert out.shape == (N, NUM_CLASSES)
    assert torch.allclose(out, expected, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(out, module.teacher(x), atol=1e-3)
    # dict batches too
    preds = make_trainer().predict(module, DataLoader(DictDataset({"input": x, "target": y}), batch_size=16))
    assert torch.allclose(torch.cat(preds), expected, atol=1e-6)


# ==================================================================================== 6. mismatch
@pytest.mark.parametrize("objective", [KD, ShapeBlind])
@pytest.mark.parametrize("sanity_steps", [0, 2])
def test_class_count_mismatch(make_trainer, sanity_steps, objective):
    x, y = make_data(num_classes=7)
    student = MLP(hidden=16, num_classes=7)
    before = params(student)
    module = DistillationModule(student, warmed_teacher(num_classes=10), loss=objective(), optimizer=sgd())
    probe = Probe()
    trainer = make_trainer(callbacks=[probe], num_sanity_val_steps=sanity_steps)
    with pytest.raises(ValueError, match=r"(10\D.*\D7\b)|(\b7\D.*\D10\b)"):
        trainer.fit(module, loader(x, y), loader(x, y))
    assert probe.optimizer_steps == 0
    assert trainer.global_step == 0
    assert same_state(params(student), before)


@pytest.mark.parametrize("teacher", [None, "net"])
def test_labels_out_of_range(make_trainer, teacher):
    x, y = make_data(num_classes=10)
    assert int(y.max()) == 9
    student = MLP(hidden=16, num_classes=7)
    before = params(student)
    if teacher is None:
        module = DistillationModule(student, None, loss=CE(), optimizer=sgd())
    else:
        module = DistillationModule(student, warmed_teacher(num_classes=7), optimizer=sgd())
    probe = Probe()
    with pytest.raises(ValueError, match=r"label 9.*7"):
        make_trainer(callbacks=[probe]).fit(module, loader(x, y))
    assert probe.optimizer_steps == 0
    assert same_state(params(student), before)


def test_student_must_return_2d_logits(make_trainer, data):
    x, y = data
    module = DistillationModule(nn.Sequential(MLP(hidden=16), nn.Unflatten(1, (2, 5))), None, loss=CE())
    with pytest.raises(ValueError, match=r"\[batch, classes\]"):
        make_trainer().fit(module, loader(x, y))


def test_student_must_be_a_module():
    with pytest.raises(TypeError, match="student"):
        DistillationModule(lambda x: x, None)  # type: ignore[arg-type]


# ========================================================================================== 7. NaN
def test_nan_teacher_names_the_kd_term(make_trainer, data):
    x, y = data
    student = MLP(hidden=16)
    before = params(student)
    module = DistillationModule(student, NaNTeacher(), loss=KD(), optimizer=sgd())
    probe = Probe()
    with pytest.raises(FloatingPointError) as err:
        make_trainer(callbacks=[probe]).fit(module, loader(x, y))
    msg = str(err.value)
    assert "'kd'" in msg and "'ce'" not in msg
    assert probe.optimizer_steps == 0
    assert same_state(params(student), before)


def test_nan_input_names_the_ce_term(make_trainer, data):
    x, y = data
    x = x.clone()
    x[3, 2] = float("nan")
    module = DistillationModule(nn.Linear(IN_FEATURES, NUM_CLASSES), None, loss=CE(), optimizer=sgd())
    with pytest.raises(FloatingPointError, match="'ce'"):
        make_trainer().fit(module, loader(x, y))


def test_nan_only_in_weighted_loss_names_loss(make_trainer, data):
    x, y = data

    class BadTotal(Loss):
        needs_teacher = False

        def forward(self, inputs):
            ce = F.cross_entropy(inputs.student_logits, inputs.target)
            return {"loss": ce * float("inf"), "ce": ce}

    module = DistillationModule(MLP(hidden=16), None, loss=BadTotal(), optimizer=sgd())
    with pytest.raises(FloatingPointError, match="'loss'"):
        make_trainer().fit(module, loader(x, y))


def test_check_finite_off_lets_nan_through(make_trainer, data):
    x, y = data
    module = DistillationModule(MLP(hidden=16), NaNTeacher(), loss=KD(), optimizer=sgd(), check_finite=False)
    trainer = make_trainer(max_steps=1)
    trainer.fit(module, loader(x, y))
    assert math.isnan(float(trainer.callback_metrics["train/kd"]))


# ===================================================================== 9. precision, distribution
def test_bf16_mixed_on_cpu(make_trainer, data):
    x, y = data
    dtypes: List[torch.dtype] = []
    student = MLP(hidden=16)
    student.head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    teacher = warmed_teacher()
    teacher_hash = state_hash(teacher)
    module = DistillationModule(student, teacher, loss=KD(), optimizer=sgd(0.05))
    probe = Probe()
    trainer = make_trainer(callbacks=[probe], precision="bf16-mixed", max_steps=4)
    trainer.fit(module, loader(x, y))
    assert torch.bfloat16 in dtypes  # autocast was really on
    assert probe.loss_dtypes == [torch.float32] * 4
    assert all(math.isfinite(v) for v in probe.losses)
    assert state_hash(teacher) == teacher_hash
    assert student.head.weight.dtype == torch.float32


@pytest.mark.slow
def test_ddp_spawn_two_cpu_processes(make_trainer, data):
    x, y = data
    teacher = warmed_teacher()
    teacher_hash = state_hash(teacher)
    student = MLP(hidden=16)
    before = snapshot(student)
    module = DistillationModule(student, teacher, loss=KD(), optimizer=sgd())
    trainer = make_trainer(strategy="ddp_spawn", devices=2, max_steps=3)
    trainer.fit(module, loader(x, y), loader(x, y))
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert "val/acc" in trainer.callback_metrics
    # the main-process module received rank 0's weights: the student moved, the teacher did not
    assert state_hash(module.teacher.net) == teacher_hash
    assert not torch.equal(module.student.head.weight, before["head.weight"])
    assert not any(m.training for m in module.teacher.net.modules())
    assert all(not p.requires_grad for p in module.teacher.parameters())


# ========================================================================== 10. labels-only paths
def test_labels_only_distillation_module(make_trainer, data):
    x, y = data
    student = MLP(hidden=16)
    before = snapshot(student)
    module = DistillationModule(student, teacher=None, loss=CE(), optimizer=sgd())
    trainer = make_trainer(max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    m = trainer.callback_metrics
    assert "train/ce" in m and "train/loss" in m and "val/acc" in m
    assert "train/kd" not in m and "val/teacher_acc" not in m and "val/agreement" not in m
    assert not torch.equal(student.head.weight, before["head.weight"])
    assert module.teacher is None


def test_default_objective_follows_the_teacher():
    assert isinstance(DistillationModule(MLP(hidden=16)).loss, CE)
    assert isinstance(DistillationModule(MLP(hidden=16), warmed_teacher()).loss, KD)


def test_kd_without_teacher_is_a_clear_error(make_trainer, data):
    x, y = data
    module = DistillationModule(MLP(hidden=16), teacher=None, loss=KD())
    probe = Probe()
    with pytest.raises(ValueError, match=r"KD needs a teacher.*teacher="):
        make_trainer(callbacks=[probe]).fit(module, loader(x, y))
    assert probe.optimizer_steps == 0
    module = DistillationModule(MLP(hidden=16), teacher=None, loss=KD())
    with pytest.raises(ValueError, match=r"needs a teacher"):
        make_trainer(num_sanity_val_steps=1).fit(module, loader(x, y), loader(x, y))


@pytest.mark.parametrize("teacher", [None, "exploding"])
def test_teacher_logits_from_the_batch(make_trainer, data, teacher):
    """Cached teacher logits in a dict batch are used (with teacher=None, and instead of running a teacher)."""
    x, y = data
    torch.manual_seed(9)
    cached = torch.randn(N, NUM_CLASSES) * 3
    student = nn.Linear(IN_FEATURES, NUM_CLASSES)
    with torch.no_grad():
        expected_kd = KF.kd_loss(student(x), cached, 2.0)
    ds = DictDataset({"input": x, "target": y, "teacher_logits": cached})
    dl = DataLoader(ds, batch_size=N)
    module = DistillationModule(student, ExplodingTeacher() if teacher else None, loss=KD(temperature=2.0),
                                optimizer=sgd(0.1))
    trainer = make_trainer(max_steps=1)
    trainer.fit(module, dl, dl)
    assert float(trainer.callback_metrics["train/kd"]) == pytest.approx(float(expected_kd), rel=1e-5)
    # validation also measures the cached teacher
    assert float(trainer.callback_metrics["val/teacher_acc"]) == pytest.approx(accuracy(cached, y), abs=1e-6)


# ------------------------------------------------------------------------------- faster steps
class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def test_channels_last_networks_and_inputs(make_trainer):
    seen = []

    class Spy(TinyConv):
        def forward(self, x):
            seen.append(x.is_contiguous(memory_format=torch.channels_last))
            return super().forward(x)

    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, NUM_CLASSES, (16,))
    module = DistillationModule(Spy(), TinyConv(), loss=KD(), channels_last=True)
    make_trainer(max_steps=2).fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
    assert seen and all(seen)
    assert module.student.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert module.teacher.net.conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_compile_flag_keeps_checkpoint_keys_clean(tmp_path, make_trainer):
    torch.manual_seed(0)
    x, y = small_data(32)
    teacher, student = small_nets()
    module = DistillationModule(student, teacher, loss=KD(), compile=True)
    trainer = make_trainer(max_steps=2)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
    assert module.hparams.compile is True
    assert getattr(module.student, "_compiled_call_impl", None) is not None, "the student runs compiled"
    path = tmp_path / "c.ckpt"
    trainer.save_checkpoint(str(path))
    keys = list(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    assert keys and not any("_orig_mod" in k for k in keys), keys
    assert not any(k.startswith("teacher.") for k in keys)
    fresh = DistillationModule(small_nets()[1], teacher, loss=KD())
    fresh.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"], strict=False)
    plain_student = small_nets()[1]
    plain_student.load_state_dict({k[len("student."):]: v for k, v in
                                   torch.load(path, map_location="cpu", weights_only=False)["state_dict"].items()
                                   if k.startswith("student.")})
