"""DIST+, SRD, SKD, KDSVD and CTKD train a student on MNIST-1D: DistillationModule + Trainer with the registry's
1-D CNNs and taps (features [batch, channels, length]); the loss falls and the student beats chance (10%)."""
from __future__ import annotations

import functools

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning import DistillationModule
from kd_lightning.data.mnist1d import load_mnist1d
from kd_lightning.losses import CTKD, KD, KDSVD, SKD, SRD, Compose, DISTPlus
from kd_lightning.models import create_model, model_entry

STAGES = model_entry("cnn1d_16").taps["stages"]
EMBEDDING = model_entry("cnn1d_16").taps["embedding"]
METHODS = {
    "dist_plus": lambda: DISTPlus(student_layers=STAGES, teacher_layers=STAGES),
    "srd": lambda: Compose([KD(temperature=1.0, ce_weight=1.0, kd_weight=1.0),
                            SRD(student_layers=EMBEDDING, teacher_layers=EMBEDDING)]),
    "skd": lambda: SKD(),
    "kdsvd": lambda: Compose([KD(), KDSVD(student_layers=STAGES, teacher_layers=STAGES)]),
    "ctkd": lambda: CTKD(ramp_epochs=1),
}


@pytest.fixture(scope="module")
def mnist1d(tmp_path_factory):
    """1,500 generated sequences (1,200 train / 300 test) and a cnn1d_64 teacher trained on them for 3 epochs."""
    d = load_mnist1d(str(tmp_path_factory.mktemp("mnist1d")), num_samples=1500)
    x, y = torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["y"]).long()
    xt, yt = torch.tensor(d["x_test"], dtype=torch.float32), torch.tensor(d["y_test"]).long()
    torch.manual_seed(0)
    teacher = create_model("cnn1d_64", num_classes=10)
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(3):
        for idx in torch.randperm(len(x)).split(100):
            loss = torch.nn.functional.cross_entropy(teacher(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return teacher.eval(), (x, y), (xt, yt)


class Losses(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_a_student_on_mnist1d(make_trainer, mnist1d, method):
    teacher, (x, y), (xt, yt) = mnist1d
    torch.manual_seed(1)
    student = create_model("cnn1d_16", num_classes=10)
    module = DistillationModule(student=student, teacher=teacher, loss=METHODS[method](),
                                optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
    losses = Losses()
    trainer = make_trainer(max_steps=-1, max_epochs=4, limit_val_batches=0, callbacks=[losses])
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True))
    assert len(losses.values) == 48 and np.all(np.isfinite(losses.values))
    assert np.mean(losses.values[-6:]) < 0.8 * np.mean(losses.values[:6]), losses.values
    student.eval()
    with torch.no_grad():
        acc = float((student(xt).argmax(1) == yt).float().mean())
    assert acc > 0.2, f"{method}: test accuracy {acc:.3f} is near chance (0.1)"
