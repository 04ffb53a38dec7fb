"""Logits, objective inputs and a tolerant comparison shared by the loss tests."""
from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from kd_lightning.losses import DistillInputs


def logits(b=5, c=7, seed=0, scale=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g, dtype=torch.float64) * scale).to(dtype)


def assert_close_to(value, expected, tol=1e-5):
    value = value.detach() if isinstance(value, torch.Tensor) else value
    expected = expected.detach() if isinstance(expected, torch.Tensor) else expected
    assert float(value) == pytest.approx(float(expected), rel=tol, abs=tol)


# ------------------------------------------------------------------------------------- objectives
def make_inputs(seed=0, epoch=1.0, with_target=True, labeled=None):
    s, t = logits(6, 5, seed=seed), logits(6, 5, seed=seed + 100)
    y = torch.tensor([0, 1, 2, 3, 4, 0]) if with_target else None
    return DistillInputs(student_logits=s.requires_grad_(), teacher_logits=t, target=y, epoch=epoch, labeled=labeled)


# ------------------------------------------------------------------------------ MNIST-1D training
# A short real training run per feature method: a CNN teacher trained on MNIST-1D's labels, a narrower
# student (16 vs 64 channels, so every adapter has to map widths) distilled with KD + the method.
MNIST1D_SAMPLES = 1200


@functools.lru_cache(maxsize=None)
def mnist1d_tensors():
    """``(x_train, y_train, x_test, y_test)`` from the package's generator (seed 42, 960 + 240 sequences)."""
    from kd_lightning.data.mnist1d import generate_mnist1d

    d = generate_mnist1d(42, MNIST1D_SAMPLES)
    f = lambda k: torch.tensor(d[k], dtype=torch.float32)  # noqa: E731
    return f("x"), torch.tensor(d["y"], dtype=torch.long), f("x_test"), torch.tensor(d["y_test"], dtype=torch.long)


@functools.lru_cache(maxsize=None)
def mnist1d_teacher_state():
    """The weights of ``cnn1d_64`` after 20 epochs of Adam (lr 1e-2, batch 100) on the labels."""
    from kd_lightning.models import create_model

    x, y, _, _ = mnist1d_tensors()
    torch.manual_seed(0)
    net = create_model("cnn1d_64", num_classes=10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(20):
        for i in torch.randperm(len(x)).split(100):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[i]), y[i]).backward()
            opt.step()
    return {k: v.clone() for k, v in net.state_dict().items()}


def mnist1d_accuracy(net, x, y) -> float:
    net.eval()
    with torch.no_grad():
        return float((net(x).argmax(-1) == y).float().mean())


class TermRecorder(L.Callback):
    """Every training step's value of one loss term, with its epoch."""

    def __init__(self, term: str):
        self.term, self.values = term, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.term in pl_module.train_terms:
            self.values.append((trainer.current_epoch + 1, float(pl_module.train_terms[self.term])))


def distill_mnist1d(make_trainer, loss, term: str, epochs: int = 6):
    """Train ``cnn1d_16`` from the MNIST-1D teacher with ``Compose([KD(), loss])``.

    Returns ``(recorded (epoch, term) values, student test accuracy, teacher test accuracy, module)``."""
    from torch.utils.data import DataLoader, TensorDataset

    from kd_lightning import DistillationModule
    from kd_lightning.losses import KD, Compose
    from kd_lightning.models import create_model

    x, y, xt, yt = mnist1d_tensors()
    teacher = create_model("cnn1d_64", num_classes=10)
    teacher.load_state_dict(mnist1d_teacher_state())
    torch.manual_seed(1)
    student = create_model("cnn1d_16", num_classes=10)
    module = DistillationModule(student=student, teacher=teacher, loss=Compose([KD(), loss]),
                                optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
    rec = TermRecorder(term)
    trainer = make_trainer(max_steps=-1, max_epochs=epochs, limit_val_batches=0, callbacks=[rec])
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True))
    return rec.values, mnist1d_accuracy(student, xt, yt), mnist1d_accuracy(teacher, xt, yt), module


def term_fell(values, ratio: float = 0.8) -> bool:
    """Whether the mean of a term over its last recorded epoch is below ``ratio`` × its mean over the first 5 steps."""
    first = [v for _, v in values[:5]]
    last_epoch = max(e for e, _ in values)
    last = [v for e, v in values if e == last_epoch]
    return sum(last) / len(last) < ratio * sum(first) / len(first)
