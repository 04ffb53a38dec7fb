"""The feature and relation objectives (kd_lightning/losses/{fitnet,at,sp,nst,vid,ofd,rkd,pkt,cc,crd,staged}.py, on
feature_base.py) end to end: DistillationModule + Trainer on tiny CNNs and digits images."""
from __future__ import annotations

import copy
import functools

import lightning as L
import numpy as np
import pytest
import torch

from helpers import N_DIGITS_TRAIN as N_TRAIN
from helpers import DigitsImages, TinyCNN
from kd_lightning import DistillationModule
from kd_lightning.losses import (AT, CC, CRD, KD, NST, OFD, PKT, RKD, SP, VID, Compose, DistillInputs, FitNet,
                                 Staged)


def make_teacher():
    torch.manual_seed(0)
    return TinyCNN(8, stride=1)  # stage2: 16 channels at 8x8


def make_student():
    torch.manual_seed(1)
    return TinyCNN(4, stride=2)  # stage2: 8 channels at 4x4 (width and spatial size both differ)


class Recorder(L.Callback):
    """Snapshot the objective's parameters after setup (adapters exist) and record every step's loss."""

    def __init__(self):
        self.losses, self.start = [], None

    def on_train_start(self, trainer, pl_module):
        self.start = copy.deepcopy(pl_module.loss.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def fit(make_trainer, module, datamodule=None, max_steps=5, callbacks=()):
    trainer = make_trainer(max_steps=max_steps, limit_val_batches=1, callbacks=list(callbacks))
    trainer.fit(module, datamodule=datamodule or DigitsImages())
    return trainer


STAGES = dict(student_layers=["stage1", "stage2"], teacher_layers=["stage1", "stage2"])
EMBED = dict(student_layers="fc:in", teacher_layers="fc:in")

METHODS = {
    "fitnet": lambda: FitNet(student_layers="stage2", teacher_layers="stage2"),
    "at": lambda: AT(**STAGES),
    "sp": lambda: SP(**STAGES),
    "nst": lambda: NST(**STAGES),
    "vid": lambda: VID(**STAGES),
    # OFD taps the BatchNorm outputs: the pre-ReLU features of the paper
    "ofd": lambda: OFD(student_layers=["stage1.1", "stage2.1"], teacher_layers=["stage1.1", "stage2.1"]),
    "rkd": lambda: RKD(**EMBED),
    "pkt": lambda: PKT(**EMBED),
    "cc": lambda: CC(**EMBED),
}
HAS_ADAPTERS = {"fitnet", "vid", "ofd"}

# Each group is one KD + methods composition (as `distill=[at,sp,nst]` builds it), to keep the CPU time low.
GROUPS = {"maps": ["at", "sp", "nst"], "embeddings": ["rkd", "pkt", "cc"], "adapters": ["fitnet", "vid", "ofd"]}


@pytest.mark.parametrize("group", list(GROUPS))
def test_methods_composed_with_kd_train(make_trainer, group):
    names = GROUPS[group]
    objectives = {name: METHODS[name]() for name in names}
    student = make_student()
    before = copy.deepcopy(student.state_dict())
    module = DistillationModule(student=student, teacher=make_teacher(),
                                loss=Compose([KD(), *objectives.values()]),
                                optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    rec = Recorder()
    trainer = fit(make_trainer, module, callbacks=[rec])
    assert len(rec.losses) == 5 and all(np.isfinite(rec.losses))
    metrics = trainer.callback_metrics
    for key in ["train/loss", "train/kd", "train/ce", "val/acc"] + [f"train/{n}" for n in names]:
        assert key in metrics, f"{key} not logged; got {sorted(metrics)}"
        assert torch.isfinite(metrics[key])
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items() if v.is_floating_point())
    trainable = {id(p) for p in module.trainable_parameters()}
    for i, (name, objective) in enumerate(objectives.items(), start=1):
        if name not in HAS_ADAPTERS:
            continue
        assert not objective.needs_build and len(objective.adapters) == len(objective.pairs)
        changed = [k for k, v in objective.state_dict().items() if k.startswith("adapters")
                   and v.is_floating_point() and not torch.equal(rec.start[f"losses.{i}.{k}"], v)]
        assert changed, f"the {name} adapter parameters were not trained"
        assert all(id(p) in trainable for p in objective.adapters.parameters())


def test_objectives_return_only_their_own_terms():
    s = {"a": torch.randn(4, 3, 4, 4), "e": torch.randn(4, 6)}
    t = {"a": torch.randn(4, 5, 2, 2), "e": torch.randn(4, 9)}
    inputs = DistillInputs(student_logits=torch.randn(4, 10), teacher_logits=torch.randn(4, 10),
                           target=torch.randint(0, 10, (4,)), student_features=s, teacher_features=t)
    expected = {AT: {"at"}, SP: {"sp"}, NST: {"nst"}, PKT: {"pkt"}, CC: {"cc"},
                RKD: {"rkd", "rkd_distance", "rkd_angle"}}
    for cls, terms in expected.items():
        obj = cls(pairs=[("e", "e")] if cls in (PKT, CC, RKD) else [("a", "a")])
        out = obj(inputs)
        assert set(out) == terms | {"loss"}
        main = next(iter(terms)) if len(terms) == 1 else "rkd"
        torch.testing.assert_close(out["loss"], obj.weight * out[main])
    for obj in (FitNet(pairs=[("a", "a")]), VID(pairs=[("a", "a")]), OFD(pairs=[("a", "a")])):
        assert obj.needs_build
        with pytest.raises(RuntimeError, match="build"):
            obj(inputs)
        obj.build(inputs)
        assert not obj.needs_build
        out = obj(inputs)
        assert set(out) == {"loss", type(obj).__name__.lower()} and torch.isfinite(out["loss"])


def test_default_weights_follow_the_cifar_tables():
    pair = dict(pairs=[("a", "b")])
    weights = {FitNet: 100.0, AT: 1000.0, SP: 3000.0, CC: 0.02, VID: 1.0, RKD: 1.0, PKT: 30000.0, NST: 50.0,
               OFD: 1e-3}
    for cls, w in weights.items():
        assert cls(**pair).weight == w
    assert CRD(num_data=10, **pair).weight == 0.8
    assert AT(student_layers=["x", "y"], teacher_layers=["u", "v"]).pairs == [("x", "u"), ("y", "v")]
    with pytest.raises(ValueError, match="pair up"):
        AT(student_layers=["x"], teacher_layers=["u", "v"])


def test_missing_feature_is_a_clear_error():
    obj = AT(pairs=[("layer3", "layer3")])
    inputs = DistillInputs(student_logits=torch.randn(2, 3), student_features={"layer2": torch.randn(2, 1, 2, 2)})
    with pytest.raises(KeyError, match="layer3"):
        obj(inputs)


def test_adapters_are_rebuilt_from_a_checkpoint(make_trainer, tmp_path):
    objective = FitNet(student_layers="stage2", teacher_layers="stage2")
    teacher = make_teacher()
    module = DistillationModule(student=make_student(), teacher=teacher, loss=Compose([KD(), objective]))
    trainer = fit(make_trainer, module, max_steps=2)
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    fresh = FitNet(student_layers="stage2", teacher_layers="stage2")
    assert fresh.needs_build
    restored = DistillationModule.load_from_checkpoint(path, student=make_student(), teacher=teacher,
                                                       loss=Compose([KD(), fresh]))
    assert not fresh.needs_build
    for (k, a), b in zip(objective.state_dict().items(), fresh.state_dict().values()):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, msg=k)
    torch.testing.assert_close(restored.student.fc.weight, module.student.fc.weight)


def test_fitnet_two_stage_switches_objective(make_trainer):
    staged = Staged(FitNet(student_layers="stage2", teacher_layers="stage2"), KD(), switch_epoch=1)
    assert staged.needs_build and staged.student_taps == ["stage2"] and staged.temperature == 4.0
    seen = []
    forward = staged.forward

    def spy(inputs):
        out = forward(inputs)
        if staged.training:
            seen.append((inputs.epoch, frozenset(out)))
        return out

    staged.forward = spy
    module = DistillationModule(student=make_student(), teacher=make_teacher(), loss=staged)
    rec = Recorder()
    fit(make_trainer, module, max_steps=8, callbacks=[rec])  # two epochs of 4 steps
    assert [e for e, _ in seen] == [1.0] * 4 + [2.0] * 4
    assert all(terms == {"loss", "fitnet"} for e, terms in seen if e == 1.0)
    assert all(terms == {"loss", "ce", "kd"} for e, terms in seen if e == 2.0)
    assert all(np.isfinite(rec.losses))
    # the regressor trained in stage 1 is part of the checkpointed objective
    assert any(k.startswith("first.adapters") for k in staged.state_dict())


def test_crd_end_to_end_with_indexed_dataset(make_trainer):
    crd = CRD(**EMBED, num_data=N_TRAIN)
    assert crd.needs_index and crd.num_negatives == N_TRAIN - 1  # 16,384 clamped to the data size
    memory = crd.memory_student.clone()
    module = DistillationModule(student=make_student(), teacher=make_teacher(), loss=Compose([KD(1.0, 1.0, 1.0), crd]),
                                optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    rec = Recorder()
    trainer = fit(make_trainer, module, DigitsImages(indexed=True), callbacks=[rec])
    assert all(np.isfinite(rec.losses))
    assert torch.isfinite(trainer.callback_metrics["train/crd"])
    assert float(crd.z_student) > 0 and float(crd.z_teacher) > 0
    changed_rows = (crd.memory_student != memory).any(1)
    assert int(changed_rows.sum()) == N_TRAIN  # one epoch touched every sample's row
    norms = crd.memory_student[changed_rows].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert any(not torch.equal(rec.start["losses.1." + k], v)
               for k, v in crd.state_dict().items() if k.startswith("adapters"))


def test_crd_without_indices_raises_a_clear_error(make_trainer):
    crd = CRD(**EMBED, num_data=N_TRAIN)
    module = DistillationModule(student=make_student(), teacher=make_teacher(), loss=Compose([KD(), crd]))
    with pytest.raises(ValueError, match="IndexedDataset"):
        fit(make_trainer, module, DigitsImages(indexed=False), max_steps=1)
    bad = CRD(pairs=[("e", "e")], num_data=4)
    inputs = DistillInputs(student_logits=torch.randn(2, 3), student_features={"e": torch.randn(2, 5)},
                           teacher_features={"e": torch.randn(2, 7)}, index=torch.tensor([0, 9]))
    bad.build(inputs)
    with pytest.raises(ValueError, match="num_data"):
        bad(inputs)
    with pytest.raises(ValueError, match="num_data"):
        CRD(pairs=[("e", "e")])


