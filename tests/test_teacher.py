"""kd_lightning/teacher.py: the frozen teacher wrapper, teacher ensembles and teachers loaded from checkpoints and
state-dict files."""
from __future__ import annotations

from typing import List

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from helpers import (MLP, Wrapped, loader, same_state, sgd, snapshot, state_hash, warmed_teacher)
from kd_lightning import ClassifierModule, DistillationModule
from kd_lightning.losses import KD
from kd_lightning.teacher import TeacherEnsemble


pytestmark = pytest.mark.usefixtures("seeded")


def test_frozen_teacher_wrapper_itself_is_in_eval_mode(make_trainer, data):
    """Every teacher module, the FrozenTeacher wrapper included, reports eval mode from construction on."""
    x, y = data
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    assert not module.teacher.training
    make_trainer(max_steps=2).fit(module, loader(x, y))
    assert not any(m.training for m in module.teacher.modules())


def test_a_teacher_whose_flags_were_lifted_still_runs_in_eval_mode(data):
    """Flags left on by someone else (a fit that failed before on_train_start) do not reach the forward."""
    x, _ = data
    teacher = warmed_teacher()
    module = DistillationModule(MLP(hidden=16), teacher, optimizer=sgd())
    expected, before = teacher(x), state_hash(teacher)
    for m in module.teacher.modules():
        m.training = True
    assert torch.equal(module.teacher(x), expected) and torch.equal(module.teacher(x), expected)  # no dropout
    assert state_hash(teacher) == before  # BatchNorm statistics unmoved
    assert not any(m.training for m in module.teacher.modules())


def test_teacher_outputs_are_deterministic_inside_training_step(make_trainer, data):
    """Dropout in the teacher would make two forwards of the same batch differ."""
    x, y = data
    seen: List[Tensor] = []

    class TwiceKD(KD):
        def forward(self, inputs):
            seen.append(inputs.teacher_logits.detach().clone())
            return super().forward(inputs)

    module = DistillationModule(MLP(hidden=16), warmed_teacher(), loss=TwiceKD(), optimizer=sgd())
    batches = [(x[:16], y[:16])] * 3
    make_trainer(max_steps=3).fit(module, DataLoader(batches, batch_size=None))
    assert len(seen) == 3
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])
    assert not seen[0].requires_grad


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


def test_ensemble_fit_keeps_every_member_frozen(make_trainer, data):
    x, y = data
    members = _members()
    hashes = [state_hash(m) for m in members]
    module = DistillationModule(MLP(hidden=16), members, loss=KD(temperature=2.0), optimizer=sgd())
    trainer = make_trainer(max_epochs=1, max_steps=-1)
    trainer.fit(module, loader(x, y), loader(x, y))
    assert [state_hash(m) for m in members] == hashes
    assert all(not m.training for member in members for m in member.modules())
    assert all(p.grad is None for member in members for p in member.parameters())
    in_opt = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not in_opt & {id(p) for member in members for p in member.parameters()}
    assert "val/teacher_acc" in trainer.callback_metrics


def test_teacher_from_classifier_checkpoint(tmp_path, make_trainer, data):
    x, y = data
    torch.manual_seed(5)
    clf = ClassifierModule(MLP(hidden=48), optimizer=sgd())
    trainer = make_trainer(max_epochs=1, max_steps=-1)
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
    make_trainer(max_steps=3).fit(module, loader(x, y))
    assert state_hash(arch) == h


def test_teacher_from_distillation_checkpoint_with_saved_teacher(tmp_path, make_trainer, data):
    """A student distilled with save_teacher=True can itself become a teacher: its student weights are taken."""
    x, y = data
    module = DistillationModule(MLP(hidden=48), warmed_teacher(), optimizer=sgd(), save_teacher=True)
    trainer = make_trainer(max_steps=2)
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
