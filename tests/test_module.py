"""The distillation core: DistillationModule / ClassifierModule driven through a real lightning.Trainer.

Tiny MLPs (the teacher has BatchNorm1d and Dropout, so any train-mode leak shows up as moved running
statistics or stochastic outputs) on small random tensors; every fit is a few CPU steps.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import warnings
from typing import Dict, List

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from kd_lightning import ClassifierModule, DistillationModule
from kd_lightning.losses import CE, KD, DistillInputs, Loss
from kd_lightning.losses import functional as KF
from kd_lightning.teacher import FrozenTeacher, TeacherEnsemble

IN_FEATURES, NUM_CLASSES, N = 16, 10, 64


# ----------------------------------------------------------------------------- models (module level:
# ddp_spawn pickles them into the worker processes)
class MLP(nn.Module):
    def __init__(self, in_features: int = IN_FEATURES, num_classes: int = NUM_CLASSES, hidden: int = 32,
                 dropout: float = 0.5):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                  nn.Dropout(dropout))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class Wrapped(nn.Module):
    """A model whose own state_dict keys start with ``net.`` (a very common layout)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.net = MLP(num_classes=num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


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


class RecordingKD(KD):
    """KD that remembers the indices and targets it was given."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen_index: List[Tensor] = []
        self.seen_target: List[Tensor] = []

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        if inputs.index is not None:
            self.seen_index.append(inputs.index.clone())
        if inputs.target is not None:
            self.seen_target.append(inputs.target.clone())
        return super().forward(inputs)


# ------------------------------------------------------------------------------------------ data
def make_data(n: int = N, num_classes: int = NUM_CLASSES, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_FEATURES, generator=g)
    w = torch.randn(IN_FEATURES, num_classes, generator=g)
    y = (x @ w).argmax(-1)
    y[:num_classes] = torch.arange(num_classes)  # every class (incl. the largest label) is present
    return x, y


class DictDataset(Dataset):
    def __init__(self, items: Dict[str, Tensor]):
        self.items = items
        self.n = len(next(iter(items.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Dict[str, Tensor]:
        return {k: v[i] for k, v in self.items.items()}


class IndexedDataset(Dataset):
    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def loader(x: Tensor, y: Tensor, batch_size: int = 16, shuffle: bool = False) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def make_trainer(tmp_path, callbacks=None, **kw) -> L.Trainer:
    opts = dict(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                default_root_dir=str(tmp_path), callbacks=callbacks or [])
    opts.update(kw)
    return L.Trainer(**opts)


def sgd(lr: float = 0.1):
    return functools.partial(torch.optim.SGD, lr=lr, momentum=0.9)


def state_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().to(torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def snapshot(module: nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def params(module: nn.Module) -> Dict[str, Tensor]:
    """Trainable parameters only (a forward in train mode legitimately moves BatchNorm buffers)."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def same_state(a: Dict[str, Tensor], b: Dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def warmed_teacher(seed: int = 1, num_classes: int = NUM_CLASSES) -> MLP:
    """A teacher whose BatchNorm statistics are not the initial 0/1 (so a reset or an update shows)."""
    torch.manual_seed(seed)
    t = MLP(num_classes=num_classes, hidden=48)
    x, _ = make_data(seed=seed + 100)
    t.train()
    with torch.no_grad():
        t(x * 3 + 1)
    return t.eval()


class Probe(L.Callback):
    """Records teacher/student modes during training, optimizer steps and loss dtypes."""

    def __init__(self):
        self.teacher_any_training: List[bool] = []
        self.student_training: List[bool] = []
        self.optimizer_steps = 0
        self.loss_dtypes: List[torch.dtype] = []
        self.losses: List[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.teacher is not None:
            # the wrapped network (the FrozenTeacher wrapper's own flag is checked separately)
            self.teacher_any_training.append(any(m.training for m in pl_module.teacher.net.modules()))
        self.student_training.append(pl_module.student.training)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.optimizer_steps += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.loss_dtypes.append(loss.dtype)
        self.losses.append(float(loss))


@pytest.fixture
def data():
    return make_data()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ================================================================ 1-2. teacher invariants, optimizer
def test_teacher_frozen_and_student_trained(tmp_path, data):
    x, y = data
    teacher = warmed_teacher()
    student = MLP(hidden=16)
    loss = AdaptedKD()
    module = DistillationModule(student, teacher, loss=loss, optimizer=sgd())
    teacher_hash, student_before = state_hash(module.teacher), snapshot(student)
    adapter_before = snapshot(loss)
    assert not bool(torch.equal(teacher.body[1].running_mean, torch.zeros(48)))  # the check is meaningful

    probe = Probe()
    trainer = make_trainer(tmp_path, callbacks=[probe], max_epochs=2, max_steps=-1)
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


def test_frozen_teacher_wrapper_itself_is_in_eval_mode(tmp_path, data):
    """Every teacher module, the FrozenTeacher wrapper included, reports eval mode from construction on."""
    x, y = data
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    assert not module.teacher.training
    make_trainer(tmp_path, max_steps=2).fit(module, loader(x, y))
    assert not any(m.training for m in module.teacher.modules())


def test_teacher_outputs_are_deterministic_inside_training_step(tmp_path, data):
    """Dropout in the teacher would make two forwards of the same batch differ."""
    x, y = data
    seen: List[Tensor] = []

    class TwiceKD(KD):
        def forward(self, inputs):
            seen.append(inputs.teacher_logits.detach().clone())
            return super().forward(inputs)

    module = DistillationModule(MLP(hidden=16), warmed_teacher(), loss=TwiceKD(), optimizer=sgd())
    batches = [(x[:16], y[:16])] * 3
    make_trainer(tmp_path, max_steps=3).fit(module, DataLoader(batches, batch_size=None))
    assert len(seen) == 3
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])
    assert not seen[0].requires_grad


def test_trainable_parameters_excludes_teacher_even_if_user_unfreezes_nothing():
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher)
    ids = {id(p) for p in module.trainable_parameters()}
    assert ids == {id(p) for p in module.student.parameters()}
    assert isinstance(module.teacher, FrozenTeacher)
    assert all(not p.requires_grad for p in teacher.parameters())


# ================================================================================= 3. checkpoints
def _hparams_are_plain(value) -> bool:
    if isinstance(value, (nn.Module, Tensor, functools.partial)) or callable(value):
        return False
    if isinstance(value, dict):
        return all(_hparams_are_plain(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_hparams_are_plain(v) for v in value)
    return True


def test_checkpoint_excludes_teacher_and_restores_student(tmp_path, data):
    x, y = data
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher, loss=AdaptedKD(), optimizer=sgd(),
                                input_key=None, ensemble_mode="probs")
    ckpt_cb = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    trainer = make_trainer(tmp_path, callbacks=[ckpt_cb], enable_checkpointing=True, max_epochs=1, max_steps=-1)
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
        assert _hparams_are_plain(hp), hp
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


def test_checkpoint_is_loadable_with_weights_only(tmp_path, data):
    """Plain hyperparameters keep the checkpoint readable by torch.load(weights_only=True)."""
    x, y = data
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, loader(x, y))
    path = tmp_path / "w.ckpt"
    trainer.save_checkpoint(str(path))
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    assert "student.head.weight" in ckpt["state_dict"]


def test_checkpoint_with_save_teacher(tmp_path, data):
    x, y = data
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher, optimizer=sgd(), save_teacher=True)
    trainer = make_trainer(tmp_path, max_steps=2)
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


def test_save_teacher_checkpoint_loads_into_student_only_module(tmp_path, data):
    """Evaluating a student from a save_teacher=True checkpoint must not require rebuilding the teacher."""
    x, y = data
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd(), save_teacher=True)
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, loader(x, y))
    path = tmp_path / "with_teacher.ckpt"
    trainer.save_checkpoint(str(path))
    restored = DistillationModule.load_from_checkpoint(str(path), student=MLP(hidden=16), teacher=None, loss=CE())
    assert restored.teacher is None
    assert same_state(snapshot(restored.student), snapshot(module.student))


def test_resume_from_checkpoint(tmp_path, data):
    x, y = data
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher, optimizer=sgd())
    trainer = make_trainer(tmp_path, max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    path = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(str(path))
    assert trainer.global_step == 4

    resumed = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    teacher_hash = state_hash(resumed.teacher)
    probe = Probe()
    trainer2 = make_trainer(tmp_path, callbacks=[probe], max_epochs=2, max_steps=-1)
    trainer2.fit(resumed, loader(x, y), loader(x, y), ckpt_path=str(path))
    assert trainer2.global_step == 8
    assert probe.optimizer_steps == 4  # only the second epoch ran
    assert state_hash(resumed.teacher) == teacher_hash
    assert not any(m.training for m in resumed.teacher.net.modules())
    assert "val/acc" in trainer2.callback_metrics


def test_classifier_hparams_and_no_module_warning(tmp_path, data):
    x, y = data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = ClassifierModule(MLP(hidden=16), optimizer=sgd(), label_smoothing=0.1)
    nn_warnings = [str(w.message) for w in caught if "instance of `nn.Module`" in str(w.message)]
    assert not nn_warnings, nn_warnings
    assert module.hparams.label_smoothing == 0.1
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, loader(x, y))
    path = tmp_path / "clf.ckpt"
    trainer.save_checkpoint(str(path))
    hp = torch.load(str(path), map_location="cpu", weights_only=False)["hyper_parameters"]
    assert _hparams_are_plain(hp), hp
    assert "model" not in hp and hp["label_smoothing"] == 0.1


# ===================================================================================== 4. batches
def _fit_recording(tmp_path, train_loader, val_loader=None, **module_kw):
    loss = RecordingKD()
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), loss=loss, optimizer=sgd(), **module_kw)
    trainer = make_trainer(tmp_path, max_epochs=1, max_steps=-1)
    trainer.fit(module, train_loader, val_loader)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    return module, loss, trainer


def test_tuple_batch(tmp_path, data):
    x, y = data
    _, loss, trainer = _fit_recording(tmp_path, loader(x, y), loader(x, y))
    assert torch.equal(torch.cat(loss.seen_target[:4]), y)
    assert not loss.seen_index
    assert "val/acc" in trainer.callback_metrics


def test_tuple_batch_with_index(tmp_path, data):
    x, y = data
    _, loss, _ = _fit_recording(tmp_path, DataLoader(IndexedDataset(x, y), batch_size=16, shuffle=True))
    assert len(loss.seen_index) == 4
    idx = torch.cat(loss.seen_index)
    assert sorted(idx.tolist()) == list(range(N))
    assert torch.equal(torch.cat(loss.seen_target), y[idx])  # index and target travel together


def test_dict_batch_with_configured_keys(tmp_path, data):
    x, y = data
    # the default names carry garbage: the configured keys must win
    ds = DictDataset({"image": x, "label": y, "input": torch.zeros(N, 3), "target": torch.full((N,), 99),
                      "idx": torch.arange(N)})
    dl = DataLoader(ds, batch_size=16)
    _, loss, trainer = _fit_recording(tmp_path, dl, dl, input_key="image", target_key="label", index_key="idx")
    assert torch.equal(torch.cat(loss.seen_target[:4]), y)
    assert torch.equal(torch.cat(loss.seen_index[:4]), torch.arange(N))
    assert "val/acc" in trainer.callback_metrics


@pytest.mark.parametrize("keys", [("input", "target"), ("image", "label"), ("x", "y"), ("pixel_values", "labels")])
def test_dict_batch_default_keys(tmp_path, data, keys):
    x, y = data
    dl = DataLoader(DictDataset({keys[0]: x, keys[1]: y, "index": torch.arange(N)}), batch_size=16)
    _, loss, _ = _fit_recording(tmp_path, dl)
    assert torch.equal(torch.cat(loss.seen_target), y)
    assert torch.equal(torch.cat(loss.seen_index), torch.arange(N))


def test_dict_batch_missing_keys(tmp_path, data):
    x, y = data
    dl = DataLoader(DictDataset({"features": x, "cls": y}), batch_size=16)
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    with pytest.raises(KeyError, match=r"input.*features.*input_key|input_key"):
        make_trainer(tmp_path).fit(module, dl)

    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd(), input_key="image")
    with pytest.raises(KeyError, match=r"'image'.*\['cls', 'features'\]"):
        make_trainer(tmp_path).fit(module, dl)

    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd(), input_key="features",
                                target_key="label")
    with pytest.raises(KeyError, match=r"'label'"):
        make_trainer(tmp_path).fit(module, dl)


def test_tuple_batch_of_wrong_length(tmp_path, data):
    x, y = data
    dl = DataLoader(TensorDataset(x, y, y, y), batch_size=16)
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    with pytest.raises(ValueError, match="dict batch"):
        make_trainer(tmp_path).fit(module, dl)


# ===================================================================================== 5. logging
def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean())


def test_logged_metrics_and_their_values(tmp_path, data):
    x, y = data
    xv, yv = make_data(n=40, seed=3)
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher, loss=KD(temperature=4.0), optimizer=sgd())
    trainer = make_trainer(tmp_path, max_epochs=2, max_steps=-1, num_sanity_val_steps=1)
    trainer.fit(module, loader(x, y), loader(xv, yv, batch_size=16))
    m = trainer.callback_metrics
    for key in ("train/loss", "train/ce", "train/kd", "val/acc", "val/acc_best", "val/acc_top5",
                "val/teacher_acc", "val/agreement", "val/loss", "val/kd", "val/ce"):
        assert key in m, (key, sorted(m))
        assert math.isfinite(float(m[key])), key

    module.eval()
    with torch.no_grad():
        s, t = module.student(xv), teacher(xv)
    assert float(m["val/acc"]) == pytest.approx(_accuracy(s, yv), abs=1e-6)
    assert float(m["val/teacher_acc"]) == pytest.approx(_accuracy(t, yv), abs=1e-6)
    assert float(m["val/agreement"]) == pytest.approx(float((s.argmax(-1) == t.argmax(-1)).float().mean()), abs=1e-6)
    top5 = (s.topk(5, -1).indices == yv[:, None]).any(-1).float().mean()
    assert float(m["val/acc_top5"]) == pytest.approx(float(top5), abs=1e-6)
    kd = KF.kd_loss(s, t, 4.0)
    assert float(m["val/kd"]) == pytest.approx(float(kd), rel=1e-4)  # batches 16,16,8: a per-sample mean
    assert float(m["val/ce"]) == pytest.approx(float(F.cross_entropy(s, yv)), rel=1e-4)
    assert float(m["val/acc_best"]) >= float(m["val/acc"]) - 1e-6

    results = trainer.test(module, loader(xv, yv), verbose=False)
    assert results[0]["test/acc"] == pytest.approx(_accuracy(s, yv), abs=1e-6)
    for key in ("test/acc", "test/acc_top5", "test/teacher_acc", "test/agreement", "test/loss"):
        assert key in results[0], (key, results[0])


def test_val_loss_is_a_per_sample_mean_over_uneven_batches(tmp_path):
    """Batches of 16, 16 and 8 samples: val/loss must weigh each batch by its size, like val/kd and val/ce."""
    xv, yv = make_data(n=40, seed=3)
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher, loss=KD(temperature=4.0))
    results = make_trainer(tmp_path).validate(module, loader(xv, yv, batch_size=16), verbose=False)[0]
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


def test_val_acc_best_is_the_maximum_over_epochs(tmp_path, data):
    x, y = data
    accs: List[float] = []

    class Rec(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                accs.append(float(trainer.callback_metrics["val/acc"]))

    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd(0.3))
    trainer = make_trainer(tmp_path, callbacks=[Rec()], max_epochs=3, max_steps=-1, num_sanity_val_steps=2)
    # the sanity-check accuracy (before training) must not count towards the best
    trainer.fit(module, loader(x, y, batch_size=32), loader(x, y, batch_size=32))
    assert len(accs) == 3
    assert float(trainer.callback_metrics["val/acc_best"]) == pytest.approx(max(accs), abs=1e-6)
    if hasattr(module, "val_history"):
        assert module.val_history == pytest.approx(accs, abs=1e-6)


def test_top5_only_with_more_than_five_classes(tmp_path):
    x, y = make_data(num_classes=4)
    module = DistillationModule(MLP(hidden=16, num_classes=4), warmed_teacher(num_classes=4), optimizer=sgd())
    trainer = make_trainer(tmp_path, max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    m = trainer.callback_metrics
    assert "val/acc" in m and "val/teacher_acc" in m
    assert "val/acc_top5" not in m
    results = trainer.test(module, loader(x, y), verbose=False)
    assert "test/acc" in results[0] and "test/acc_top5" not in results[0]


def test_train_metrics_reach_a_csv_logger(tmp_path, data):
    from lightning.pytorch.loggers import CSVLogger

    x, y = data
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = make_trainer(tmp_path, logger=logger, log_every_n_steps=1, max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    for key in ("train/loss", "train/ce", "train/kd", "val/acc", "val/acc_best"):
        assert key in trainer.logged_metrics, (key, sorted(trainer.logged_metrics))
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        header = f.readline()
    assert "train/kd" in header and "val/agreement" in header


def test_predict_step_returns_student_logits(tmp_path, data):
    x, y = data
    module = DistillationModule(MLP(hidden=16), warmed_teacher(num_classes=NUM_CLASSES), optimizer=sgd())
    make_trainer(tmp_path, max_steps=2).fit(module, loader(x, y))
    preds = make_trainer(tmp_path).predict(module, DataLoader(TensorDataset(x), batch_size=16))
    module.eval()
    with torch.no_grad():
        expected = module.student(x)
    out = torch.cat(preds)
    assert out.shape == (N, NUM_CLASSES)
    assert torch.allclose(out, expected, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(out, module.teacher(x), atol=1e-3)
    # dict batches too
    preds = make_trainer(tmp_path).predict(module, DataLoader(DictDataset({"input": x, "target": y}), batch_size=16))
    assert torch.allclose(torch.cat(preds), expected, atol=1e-6)


# ==================================================================================== 6. mismatch
@pytest.mark.parametrize("objective", [KD, ShapeBlind])
@pytest.mark.parametrize("sanity_steps", [0, 2])
def test_class_count_mismatch(tmp_path, sanity_steps, objective):
    x, y = make_data(num_classes=7)
    student = MLP(hidden=16, num_classes=7)
    before = params(student)
    module = DistillationModule(student, warmed_teacher(num_classes=10), loss=objective(), optimizer=sgd())
    probe = Probe()
    trainer = make_trainer(tmp_path, callbacks=[probe], num_sanity_val_steps=sanity_steps)
    with pytest.raises(ValueError, match=r"(10\D.*\D7\b)|(\b7\D.*\D10\b)"):
        trainer.fit(module, loader(x, y), loader(x, y))
    assert probe.optimizer_steps == 0
    assert trainer.global_step == 0
    assert same_state(params(student), before)


@pytest.mark.parametrize("teacher", [None, "net"])
def test_labels_out_of_range(tmp_path, teacher):
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
        make_trainer(tmp_path, callbacks=[probe]).fit(module, loader(x, y))
    assert probe.optimizer_steps == 0
    assert same_state(params(student), before)


def test_student_must_return_2d_logits(tmp_path, data):
    x, y = data
    module = DistillationModule(nn.Sequential(MLP(hidden=16), nn.Unflatten(1, (2, 5))), None, loss=CE())
    with pytest.raises(ValueError, match=r"\[batch, classes\]"):
        make_trainer(tmp_path).fit(module, loader(x, y))


def test_student_must_be_a_module():
    with pytest.raises(TypeError, match="student"):
        DistillationModule(lambda x: x, None)  # type: ignore[arg-type]


# ========================================================================================== 7. NaN
def test_nan_teacher_names_the_kd_term(tmp_path, data):
    x, y = data
    student = MLP(hidden=16)
    before = params(student)
    module = DistillationModule(student, NaNTeacher(), loss=KD(), optimizer=sgd())
    probe = Probe()
    with pytest.raises(FloatingPointError) as err:
        make_trainer(tmp_path, callbacks=[probe]).fit(module, loader(x, y))
    msg = str(err.value)
    assert "'kd'" in msg and "'ce'" not in msg
    assert probe.optimizer_steps == 0
    assert same_state(params(student), before)


def test_nan_input_names_the_ce_term(tmp_path, data):
    x, y = data
    x = x.clone()
    x[3, 2] = float("nan")
    module = DistillationModule(nn.Linear(IN_FEATURES, NUM_CLASSES), None, loss=CE(), optimizer=sgd())
    with pytest.raises(FloatingPointError, match="'ce'"):
        make_trainer(tmp_path).fit(module, loader(x, y))


def test_nan_only_in_weighted_loss_names_loss(tmp_path, data):
    x, y = data

    class BadTotal(Loss):
        needs_teacher = False

        def forward(self, inputs):
            ce = F.cross_entropy(inputs.student_logits, inputs.target)
            return {"loss": ce * float("inf"), "ce": ce}

    module = DistillationModule(MLP(hidden=16), None, loss=BadTotal(), optimizer=sgd())
    with pytest.raises(FloatingPointError, match="'loss'"):
        make_trainer(tmp_path).fit(module, loader(x, y))


def test_check_finite_off_lets_nan_through(tmp_path, data):
    x, y = data
    module = DistillationModule(MLP(hidden=16), NaNTeacher(), loss=KD(), optimizer=sgd(), check_finite=False)
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(module, loader(x, y))
    assert math.isnan(float(trainer.callback_metrics["train/kd"]))


# ============================================================================= 8. teacher sources
def _members(seed: int = 11):
    return [warmed_teacher(seed=seed), warmed_teacher(seed=seed + 1), warmed_teacher(seed=seed + 2)]


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_ensemble_probs_mode(temperature, data):
    x, _ = data
    members = _members()
    weights = [1.0, 2.0, 5.0]
    module = DistillationModule(MLP(hidden=16), members, loss=KD(temperature=temperature), ensemble_weights=weights)
    assert isinstance(module.teacher.net, TeacherEnsemble)
    assert module.teacher.net.temperature == temperature
    z = module.teacher(x)
    w = torch.tensor(weights) / sum(weights)
    with torch.no_grad():
        expected = sum(wk * F.softmax(m(x) / temperature, -1) for wk, m in zip(w, members))
    assert torch.allclose(F.softmax(z / temperature, -1), expected, atol=1e-6)
    # unequal weights actually matter
    with torch.no_grad():
        plain = sum(F.softmax(m(x) / temperature, -1) for m in members) / 3
    assert not torch.allclose(expected, plain, atol=1e-3)


def test_ensemble_logits_mode_and_default_weights(data):
    x, _ = data
    members = _members()
    module = DistillationModule(MLP(hidden=16), members, ensemble_mode="logits", ensemble_weights=[3, 1, 0])
    with torch.no_grad():
        expected = 0.75 * members[0](x) + 0.25 * members[1](x)
    assert torch.allclose(module.teacher(x), expected, atol=1e-6)

    module = DistillationModule(MLP(hidden=16), members, ensemble_mode="logits")
    with torch.no_grad():
        expected = sum(m(x) for m in members) / 3
    assert torch.allclose(module.teacher(x), expected, atol=1e-6)


@pytest.mark.parametrize("kw, match", [
    (dict(ensemble_weights=[1.0, 2.0]), "weight"),
    (dict(ensemble_weights=[1.0, -1.0, 1.0]), "weight"),
    (dict(ensemble_mode="median"), "mode"),
])
def test_ensemble_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        DistillationModule(MLP(hidden=16), _members(), **kw)


def test_ensemble_fit_keeps_every_member_frozen(tmp_path, data):
    x, y = data
    members = _members()
    hashes = [state_hash(m) for m in members]
    module = DistillationModule(MLP(hidden=16), members, loss=KD(temperature=2.0), optimizer=sgd())
    trainer = make_trainer(tmp_path, max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    assert [state_hash(m) for m in members] == hashes
    assert all(not m.training for member in members for m in member.modules())
    assert all(p.grad is None for member in members for p in member.parameters())
    in_opt = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not in_opt & {id(p) for member in members for p in member.parameters()}
    assert "val/teacher_acc" in trainer.callback_metrics


def test_teacher_from_classifier_checkpoint(tmp_path, data):
    x, y = data
    torch.manual_seed(5)
    clf = ClassifierModule(MLP(hidden=48), optimizer=sgd())
    trainer = make_trainer(tmp_path, max_epochs=1, max_steps=-1)
    trainer.fit(clf, loader(x, y), loader(x, y))
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(str(path))
    trained = snapshot(clf.model)

    for source in (str(path), path):  # str and os.PathLike
        arch = MLP(hidden=48)
        module = DistillationModule(MLP(hidden=16), source, teacher_architecture=arch, optimizer=sgd())
        assert module.teacher.net is arch
        assert same_state(snapshot(arch), trained)  # incl. BatchNorm running statistics
        assert not any(m.training for m in arch.modules())
    h = state_hash(arch)
    make_trainer(tmp_path, max_steps=3).fit(module, loader(x, y))
    assert state_hash(arch) == h


def test_teacher_from_distillation_checkpoint_with_saved_teacher(tmp_path, data):
    """A student distilled with save_teacher=True can itself become a teacher: its student weights are taken."""
    x, y = data
    module = DistillationModule(MLP(hidden=48), warmed_teacher(), optimizer=sgd(), save_teacher=True)
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, loader(x, y))
    path = tmp_path / "kd.ckpt"
    trainer.save_checkpoint(str(path))
    arch = MLP(hidden=48)
    DistillationModule(MLP(hidden=16), str(path), teacher_architecture=arch)
    assert same_state(snapshot(arch), snapshot(module.student))


def test_teacher_from_plain_state_dict(tmp_path, data):
    teacher = warmed_teacher()
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), str(path))
    arch = MLP(hidden=48)
    module = DistillationModule(MLP(hidden=16), str(path), teacher_architecture=arch)
    assert same_state(snapshot(module.teacher.net), snapshot(teacher))


def test_teacher_from_plain_state_dict_whose_keys_start_with_net(tmp_path):
    """``torch.save(model.state_dict())`` of a model holding ``self.net`` must load into that model."""
    torch.manual_seed(3)
    teacher = Wrapped()
    path = tmp_path / "wrapped.pt"
    torch.save(teacher.state_dict(), str(path))
    arch = Wrapped()
    module = DistillationModule(MLP(hidden=16), str(path), teacher_architecture=arch)
    assert same_state(snapshot(module.teacher.net), snapshot(teacher))


def test_teacher_missing_path(tmp_path):
    missing = tmp_path / "nope" / "teacher.ckpt"
    with pytest.raises(FileNotFoundError, match=r"teacher.*nope"):
        DistillationModule(MLP(hidden=16), str(missing), teacher_architecture=MLP(hidden=48))


def test_teacher_wrong_architecture(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save(warmed_teacher().state_dict(), str(path))
    with pytest.raises(ValueError, match=r"teacher\.pt.*MLP"):
        DistillationModule(MLP(hidden=16), str(path), teacher_architecture=MLP(hidden=32))
    with pytest.raises(ValueError, match="num_classes"):
        DistillationModule(MLP(hidden=16), str(path), teacher_architecture=MLP(hidden=48, num_classes=7))


def test_teacher_path_without_architecture(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save(warmed_teacher().state_dict(), str(path))
    with pytest.raises(ValueError, match="teacher_architecture"):
        DistillationModule(MLP(hidden=16), str(path))


def test_teacher_of_wrong_type():
    with pytest.raises(TypeError, match="teacher"):
        DistillationModule(MLP(hidden=16), 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="nn.Module"):
        DistillationModule(MLP(hidden=16), [MLP(), "x"])  # type: ignore[list-item]


# ===================================================================== 9. precision, distribution
def test_bf16_mixed_on_cpu(tmp_path, data):
    x, y = data
    dtypes: List[torch.dtype] = []
    student = MLP(hidden=16)
    student.head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    teacher = warmed_teacher()
    teacher_hash = state_hash(teacher)
    module = DistillationModule(student, teacher, loss=KD(), optimizer=sgd(0.05))
    probe = Probe()
    trainer = make_trainer(tmp_path, callbacks=[probe], precision="bf16-mixed", max_steps=4)
    trainer.fit(module, loader(x, y))
    assert torch.bfloat16 in dtypes  # autocast was really on
    assert probe.loss_dtypes == [torch.float32] * 4
    assert all(math.isfinite(v) for v in probe.losses)
    assert state_hash(teacher) == teacher_hash
    assert student.head.weight.dtype == torch.float32


@pytest.mark.slow
def test_ddp_spawn_two_cpu_processes(tmp_path, data):
    x, y = data
    teacher = warmed_teacher()
    teacher_hash = state_hash(teacher)
    student = MLP(hidden=16)
    before = snapshot(student)
    module = DistillationModule(student, teacher, loss=KD(), optimizer=sgd())
    trainer = make_trainer(tmp_path, strategy="ddp_spawn", devices=2, max_steps=3)
    trainer.fit(module, loader(x, y), loader(x, y))
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert "val/acc" in trainer.callback_metrics
    # the main-process module received rank 0's weights: the student moved, the teacher did not
    assert state_hash(module.teacher.net) == teacher_hash
    assert not torch.equal(module.student.head.weight, before["head.weight"])
    assert not any(m.training for m in module.teacher.net.modules())
    assert all(not p.requires_grad for p in module.teacher.parameters())


# ========================================================================== 10. labels-only paths
def test_labels_only_distillation_module(tmp_path, data):
    x, y = data
    student = MLP(hidden=16)
    before = snapshot(student)
    module = DistillationModule(student, teacher=None, loss=CE(), optimizer=sgd())
    trainer = make_trainer(tmp_path, max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    m = trainer.callback_metrics
    assert "train/ce" in m and "train/loss" in m and "val/acc" in m
    assert "train/kd" not in m and "val/teacher_acc" not in m and "val/agreement" not in m
    assert not torch.equal(student.head.weight, before["head.weight"])
    assert module.teacher is None


def test_default_objective_follows_the_teacher():
    assert isinstance(DistillationModule(MLP(hidden=16)).loss, CE)
    assert isinstance(DistillationModule(MLP(hidden=16), warmed_teacher()).loss, KD)


def test_classifier_module_trains(tmp_path, data):
    x, y = data
    model = MLP(hidden=16)
    module = ClassifierModule(model, optimizer=sgd(0.3))
    assert module.model is model and module.teacher is None and isinstance(module.loss, CE)
    probe = Probe()
    trainer = make_trainer(tmp_path, callbacks=[probe], max_epochs=5, max_steps=-1)
    trainer.fit(module, loader(x, y, shuffle=True), loader(x, y))
    assert probe.losses[-1] < probe.losses[0]
    assert float(trainer.callback_metrics["val/acc"]) > 1.0 / NUM_CLASSES


def test_kd_without_teacher_is_a_clear_error(tmp_path, data):
    x, y = data
    module = DistillationModule(MLP(hidden=16), teacher=None, loss=KD())
    probe = Probe()
    with pytest.raises(ValueError, match=r"KD needs a teacher.*teacher="):
        make_trainer(tmp_path, callbacks=[probe]).fit(module, loader(x, y))
    assert probe.optimizer_steps == 0
    module = DistillationModule(MLP(hidden=16), teacher=None, loss=KD())
    with pytest.raises(ValueError, match=r"needs a teacher"):
        make_trainer(tmp_path, num_sanity_val_steps=1).fit(module, loader(x, y), loader(x, y))


@pytest.mark.parametrize("teacher", [None, "exploding"])
def test_teacher_logits_from_the_batch(tmp_path, data, teacher):
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
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(module, dl, dl)
    assert float(trainer.callback_metrics["train/kd"]) == pytest.approx(float(expected_kd), rel=1e-5)
    # validation also measures the cached teacher
    assert float(trainer.callback_metrics["val/teacher_acc"]) == pytest.approx(_accuracy(cached, y), abs=1e-6)
