"""kd_lightning/cache/data.py: TeacherOutputsDataset and TeacherOutputsDataModule serve cached teacher rows to
shuffled and distributed loaders, and training on them equals online KD."""
from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from kd_lightning import DistillationModule
from kd_lightning.cache import TeacherOutputsDataModule
from kd_lightning.exact_resume import ResumableSampler
from kd_lightning.losses import KD

from .helpers import C, D, N, Arrays, exact_logits, make_teacher


def test_datamodule_serves_cached_rows_to_shuffled_and_distributed_loaders(tmp_path):
    dm = Arrays()
    teacher = make_teacher()
    cached = TeacherOutputsDataModule(dm, teacher, tmp_path, data_config={"n": N}, device="cpu")
    cached.setup("fit")
    assert set(cached.outputs) == {"train", "val", "test"}
    assert cached.num_classes == C  # attributes of the wrapped module pass through
    for split, (xs, ys) in {"train": (dm.x_train, dm.y_train), "val": (dm.x_val, dm.y_val),
                            "test": (dm.x_test, dm.y_test)}.items():
        expected = exact_logits(teacher, xs)
        loader = getattr(cached, f"{split}_dataloader")()
        for batch in loader:
            i = batch["index"]
            assert torch.equal(batch["input"], xs[i]) and torch.equal(batch["target"], ys[i])
            assert torch.allclose(batch["teacher_logits"], expected[i], atol=1e-6)
    # two DDP ranks: each reads the rows of exactly the samples its sampler gives it
    train = cached.train_dataloader()
    # shuffled as the wrapped loader is, in the order a resumed fit can continue (kd_lightning.exact_resume)
    assert isinstance(dm.train_dataloader().sampler, ResumableSampler) and isinstance(train.sampler, ResumableSampler)
    assert not isinstance(cached.val_dataloader().sampler, ResumableSampler)
    expected = exact_logits(teacher, dm.x_train)
    covered = []
    for rank in range(2):
        sampler = DistributedSampler(train.dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(train.dataset, batch_size=8, sampler=sampler, collate_fn=train.collate_fn)
        for batch in loader:
            assert torch.allclose(batch["teacher_logits"], expected[batch["index"]], atol=1e-6)
            assert torch.equal(batch["input"], dm.x_train[batch["index"]])
            covered += batch["index"].tolist()
    assert sorted(covered) == list(range(len(dm.y_train)))


# ------------------------------------------------------------------------------ training on a cache
class FirstSteps(L.Callback):
    def __init__(self):
        self.losses, self.inputs = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.inputs.append(batch["input"] if isinstance(batch, dict) else batch[0])


def _fit(make_trainer, module, dm, steps=3):
    rec = FirstSteps()
    L.seed_everything(7)
    trainer = make_trainer(max_steps=steps, limit_val_batches=0, callbacks=[rec])
    trainer.fit(module, datamodule=dm)
    return rec


def test_fit_on_cached_logits_matches_online_kd_on_the_first_step(tmp_path, make_trainer):
    teacher = make_teacher()
    teacher.eval()
    torch.manual_seed(3)
    student = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, C))
    init = {k: v.clone() for k, v in student.state_dict().items()}
    opt = functools.partial(torch.optim.SGD, lr=0.1)

    online = DistillationModule(student, teacher, loss=KD(temperature=4.0), optimizer=opt)
    rec_online = _fit(make_trainer, online, Arrays())

    student.load_state_dict(init)
    cached_dm = TeacherOutputsDataModule(Arrays(), teacher, tmp_path / "cache", device="cpu")
    offline = DistillationModule(student, None, loss=KD(temperature=4.0), optimizer=opt)
    assert offline.teacher is None
    rec_cached = _fit(make_trainer, offline, cached_dm)

    assert torch.equal(rec_online.inputs[0], rec_cached.inputs[0]), "both fits must see the same first batch"
    assert rec_cached.losses[0] == pytest.approx(rec_online.losses[0], rel=1e-6, abs=1e-7)
    assert rec_cached.losses == pytest.approx(rec_online.losses, rel=1e-4)
    # evaluation measures the cached teacher too
    res = make_trainer().test(offline, datamodule=cached_dm, verbose=False)[0]
    x_test, y_test = cached_dm.x_test, cached_dm.y_test
    teacher_pred = exact_logits(teacher, x_test).argmax(-1)
    with torch.no_grad():
        student_pred = offline.student(x_test).argmax(-1)
    assert res["test/teacher_acc"] == pytest.approx(float((teacher_pred == y_test).float().mean()), abs=1e-6)
    assert res["test/agreement"] == pytest.approx(float((student_pred == teacher_pred).float().mean()), abs=1e-6)


def test_a_classifier_trains_from_stored_top_k_teacher_outputs(tmp_path, make_trainer):
    """Top-k storage with the rest mass: each training batch's teacher distribution keeps the teacher's k
    largest probabilities exactly and spreads the rest evenly, and the first step's KD loss is the one taken
    against that distribution by hand."""
    teacher, k = make_teacher(), 3
    torch.manual_seed(3)
    student = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, C))
    with torch.no_grad():
        first = [p.clone() for p in student.parameters()]
    dm = TeacherOutputsDataModule(Arrays(), teacher, tmp_path, top_k=k, device="cpu")
    module = DistillationModule(student, None, loss=KD(temperature=1.0, ce_weight=0.0, kd_weight=1.0),
                                optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    rec = _fit(make_trainer, module, dm)
    batch = next(iter(dm.train_dataloader()))
    p_teacher = exact_logits(teacher, dm.x_train[batch["index"]]).softmax(-1)
    p_stored = batch["teacher_logits"].softmax(-1)
    top = p_teacher.topk(k, -1)
    torch.testing.assert_close(p_stored.gather(-1, top.indices), top.values, rtol=1e-5, atol=1e-6)
    rest = (1 - top.values.sum(-1, keepdim=True)) / (C - k)
    others = torch.ones_like(p_teacher, dtype=torch.bool).scatter(-1, top.indices, False)
    torch.testing.assert_close(p_stored[others].view(-1, C - k), rest.expand(-1, C - k), rtol=1e-5, atol=1e-6)
    # the first step's loss: KL(stored || student) with the student's initial weights, on the first batch
    seen = rec.inputs[0]
    idx = torch.stack([torch.nonzero((dm.x_train == row).all(-1))[0, 0] for row in seen])
    q = torch.nn.functional.log_softmax(torch.func.functional_call(
        student, {n: p for (n, _), p in zip(student.named_parameters(), first)}, (seen,)), -1)
    p = dm.outputs["train"].rows(idx).softmax(-1)
    assert rec.losses[0] == pytest.approx(float((p * (p.log() - q)).sum(-1).mean()), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(first, student.parameters()))


def test_cached_batches_and_batch_transform_do_not_mix(tmp_path, make_trainer):
    from kd_lightning.augment import Mixup

    cached_dm = TeacherOutputsDataModule(Arrays(), make_teacher(), tmp_path, device="cpu")
    module = DistillationModule(nn.Linear(D, C), None, loss=KD(), batch_transform=Mixup())
    with pytest.raises(ValueError, match="live teacher"):
        _fit(make_trainer, module, cached_dm, steps=1)
