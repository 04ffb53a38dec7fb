"""kd_lightning/losses/ickd.py: the embedding, the term, and a short MNIST-1D run."""
from __future__ import annotations

import torch

from kd_lightning.losses import ICKD, DistillInputs
from kd_lightning.losses import functional as KF

from .helpers import distill_mnist1d, term_fell


def test_embedded_student_correlations_against_the_teachers():
    g = torch.Generator().manual_seed(0)
    x = DistillInputs(student_logits=torch.randn(4, 10, generator=g),
                      student_features={"s": torch.randn(4, 3, 5, generator=g)},
                      teacher_features={"t": torch.randn(4, 8, 3, generator=g)})  # widths and lengths differ
    loss = ICKD(student_layers="s", teacher_layers="t", weight=3.0)
    loss.build(x)
    loss.eval()
    embedded = loss.adapters[0](x.student_features["s"])
    assert embedded.shape == (4, 8, 5)
    expected = KF.ickd_loss(embedded, x.teacher_features["t"])
    out = loss(x)
    torch.testing.assert_close(out["ickd"], expected)
    torch.testing.assert_close(out["loss"], 3.0 * expected)
    assert ICKD(pairs=[("s", "t")]).weight == 2.5


def test_trains_a_mnist1d_student(make_trainer):
    values, acc, teacher_acc, _ = distill_mnist1d(
        make_trainer, ICKD(student_layers="blocks.2", teacher_layers="blocks.2"), "ickd")
    assert term_fell(values), values
    assert teacher_acc > 0.6 and acc > 0.2, (acc, teacher_acc)  # chance is 0.1
