"""kd_lightning/losses/dist.py: the DIST objective's inter- and intra-class terms."""
from __future__ import annotations



from kd_lightning.losses import DIST
from kd_lightning.losses import functional as KF

from .helpers import assert_close_to, make_inputs


def test_dist_objective():
    inp = make_inputs()
    out = DIST()(inp)
    assert set(out) == {"loss", "ce", "dist", "inter", "intra"}
    inter, intra = KF.dist_terms(inp.student_logits, inp.teacher_logits, 4.0)
    assert_close_to(out["inter"], inter)
    assert_close_to(out["intra"], intra)
    assert_close_to(out["loss"], out["ce"] + 2.0 * (inter + intra))
