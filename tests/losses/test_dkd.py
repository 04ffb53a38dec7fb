"""kd_lightning/losses/dkd.py: the DKD objective's terms and its warm-up."""
from __future__ import annotations


import pytest

from kd_lightning.losses import DKD

from .helpers import assert_close_to, make_inputs


@pytest.mark.parametrize("epoch,factor", [(1, 0.05), (10, 0.5), (20, 1.0), (40, 1.0)])
def test_dkd_warmup(epoch, factor):
    obj = DKD(temperature=4.0, alpha=1.0, beta=8.0, ce_weight=1.0, warmup_epochs=20)
    assert obj.warmup_factor(epoch) == pytest.approx(factor)
    inp = make_inputs(epoch=float(epoch))
    out = obj(inp)
    assert set(out) == {"loss", "ce", "dkd", "tckd", "nckd"}
    assert_close_to(out["dkd"], out["tckd"] + 8.0 * out["nckd"])
    assert_close_to(out["loss"], out["ce"] + factor * out["dkd"])
    assert DKD(warmup_epochs=0).warmup_factor(1) == 1.0
