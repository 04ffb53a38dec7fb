"""kd_lightning/losses/base.py: what every response objective shares: unlabeled batches keep the distillation
term, and a missing teacher is a clear error."""
from __future__ import annotations


import pytest

from kd_lightning.losses import DIST, DKD, KD, LogitMSE
from kd_lightning.losses import functional as KF

from .helpers import assert_close_to, make_inputs


def test_unlabeled_batches_keep_the_distillation_term():
    inp = make_inputs(with_target=False)
    for obj, key in ((KD(), "kd"), (DKD(warmup_epochs=0), "dkd"), (DIST(), "dist"), (LogitMSE(ce_weight=1.0), "mse")):
        out = obj(inp)
        assert float(out["ce"]) == 0.0
        assert float(out[key].detach()) > 0
        assert out["loss"].requires_grad
        weight = getattr(obj, "kd_weight", 1.0)
        assert_close_to(out["loss"], weight * out[key])
    # ... and it is the same term as with labels (DKD takes the teacher's top class as the target)
    s, t = inp.student_logits, inp.teacher_logits
    assert_close_to(KD()(inp)["kd"], KF.kd_loss(s, t, 4.0))
    assert_close_to(DKD(warmup_epochs=0)(inp)["dkd"], KF.dkd_loss(s, t, t.argmax(-1)))
    assert_close_to(LogitMSE(ce_weight=1.0)(inp)["mse"], KF.logit_mse(s, t))


def test_missing_teacher_logits_is_a_clear_error():
    inp = make_inputs()
    inp.teacher_logits = None
    with pytest.raises(ValueError, match="teacher logits"):
        KD()(inp)
