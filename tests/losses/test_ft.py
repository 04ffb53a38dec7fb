"""kd_lightning/losses/ft.py: the paraphraser's stage, then the translator's with the paraphraser fixed, a checkpoint
round trip and a short MNIST-1D run through both stages."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.losses import FT, DistillInputs, Staged
from kd_lightning.losses import functional as KF

from .helpers import distill_mnist1d, term_fell


def inputs(epoch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DistillInputs(student_logits=torch.randn(4, 10, generator=g),
                         student_features={"s": torch.randn(4, 3, 6, 6, generator=g)},
                         teacher_features={"t": torch.randn(4, 8, 6, 6, generator=g)}, epoch=epoch)


def built(**kw):
    loss = FT(student_layers="s", teacher_layers="t", paraphraser_epochs=2, **kw)
    loss.build(inputs(1.0))
    return loss


def test_first_stage_trains_the_paraphraser_to_reconstruct_the_teacher():
    loss = built()
    assert isinstance(loss, Staged) and loss.weight == 200.0
    paraphraser = loss.first.adapters[0]
    x = inputs(2.0)  # the last paraphraser epoch
    t = x.teacher_features["t"]
    assert paraphraser.encoder(t).shape == (4, 4, 6, 6)  # rate 0.5 of 8 channels
    out = loss(x)
    assert set(out) == {"loss", "ft_reconstruction"}
    torch.testing.assert_close(out["loss"], F.mse_loss(paraphraser(t), t))
    out["loss"].backward()
    assert all(p.grad is not None for p in paraphraser.parameters())
    assert all(p.grad is None for p in loss.then.adapters.parameters())  # the translator waits


def test_second_stage_trains_the_translator_against_the_fixed_teacher_factor():
    loss = built(p=1.0, mode="paper")
    x = inputs(3.0)
    x.student_features["s"].requires_grad_()
    out = loss(x)
    assert set(out) == {"loss", "ft"}
    with torch.no_grad():
        factor = loss.first.adapters[0].encoder(x.teacher_features["t"])
        expected = KF.ft_loss(loss.then.adapters[0](x.student_features["s"]), factor, 1.0, "paper")
    torch.testing.assert_close(out["ft"], expected)
    torch.testing.assert_close(out["loss"], 200.0 * expected)
    out["loss"].backward()
    assert x.student_features["s"].grad is not None
    assert all(p.grad is None for p in loss.first.adapters.parameters())  # the paraphraser stays as trained


def test_paraphraser_is_saved_once_and_rebuilt_from_a_state_dict():
    loss = built()
    state = loss.state_dict()
    assert any(k.startswith("first.adapters.0.encoder") for k in state)
    assert not any(k.startswith("then.paraphrase") for k in state)
    fresh = FT(student_layers="s", teacher_layers="t", paraphraser_epochs=2)
    fresh.load_state_dict(state)
    loss.eval(), fresh.eval()
    for epoch in (1.0, 3.0):
        torch.testing.assert_close(fresh(inputs(epoch))["loss"], loss(inputs(epoch))["loss"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="rate"):
        FT(pairs=[("s", "t")], rate=0.0)
    with pytest.raises(ValueError, match="mode"):
        FT(pairs=[("s", "t")], mode="other")
    with pytest.raises(ValueError, match="switch_epoch"):
        FT(pairs=[("s", "t")], paraphraser_epochs=-1)


def test_trains_a_mnist1d_student_through_both_stages(make_trainer):
    loss = FT(student_layers="blocks.2", teacher_layers="blocks.2", paraphraser_epochs=2)
    reconstruction, acc, teacher_acc, _ = distill_mnist1d(make_trainer, loss, "ft_reconstruction")
    assert {e for e, _ in reconstruction} == {1, 2} and term_fell(reconstruction), reconstruction
    assert teacher_acc > 0.6 and acc > 0.2, (acc, teacher_acc)  # chance is 0.1
    # the same run again, recording the translator's term (epochs 3 to 6): it falls too
    loss = FT(student_layers="blocks.2", teacher_layers="blocks.2", paraphraser_epochs=2)
    factors, *_ = distill_mnist1d(make_trainer, loss, "ft")
    assert {e for e, _ in factors} == {3, 4, 5, 6} and term_fell(factors), factors
