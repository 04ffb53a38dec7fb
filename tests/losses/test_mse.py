"""kd_lightning/losses/mse.py: the logit-MSE objective."""
from __future__ import annotations



from kd_lightning.losses import LogitMSE
from kd_lightning.losses import functional as KF

from .helpers import assert_close_to, make_inputs


def test_logit_mse_objective():
    inp = make_inputs()
    obj = LogitMSE()
    out = obj(inp)
    assert obj.temperature is None and set(out) == {"loss", "ce", "mse"}
    assert_close_to(out["loss"], out["mse"])
    assert_close_to(out["mse"], KF.logit_mse(inp.student_logits, inp.teacher_logits))
