"""kd_lightning/losses/kd.py: the KD objective's terms and total, its variants, the labeled mask, and the fused
Hinton path taken only where it is exact."""
from __future__ import annotations


import torch

from kd_lightning.losses import CE, DKD, KD, DistillInputs
from kd_lightning.losses import functional as KF

from .helpers import assert_close_to, make_inputs


def test_kd_objective_terms_and_total():
    obj = KD(temperature=4.0, ce_weight=0.1, kd_weight=0.9)
    inp = make_inputs()
    out = obj(inp)
    assert set(out) == {"loss", "ce", "kd"}
    ce = torch.nn.functional.cross_entropy(inp.student_logits, inp.target)
    assert_close_to(out["ce"], ce)
    assert_close_to(out["kd"], KF.kd_loss(inp.student_logits, inp.teacher_logits, 4.0))
    assert_close_to(out["loss"], 0.1 * out["ce"] + 0.9 * out["kd"])
    out["loss"].backward()
    assert torch.isfinite(inp.student_logits.grad).all()
    assert obj.temperature == 4.0


def test_kd_objective_variants_and_label_smoothing():
    inp = make_inputs()
    out = KD(temperature=2.0, divergence="js", standardize=True, label_smoothing=0.1)(inp)
    assert_close_to(out["kd"], KF.kd_loss(inp.student_logits, inp.teacher_logits, 2.0, "js", True))
    assert_close_to(out["ce"], torch.nn.functional.cross_entropy(inp.student_logits, inp.target, label_smoothing=0.1))


def test_kd_with_zero_kd_weight_equals_ce():
    inp = make_inputs()
    assert_close_to(KD(ce_weight=1.0, kd_weight=0.0)(inp)["loss"], CE()(inp)["loss"], 1e-7)


def test_labeled_mask_restricts_ce():
    mask = torch.tensor([True, True, False, False, True, False])
    inp = make_inputs(labeled=mask)
    out = KD(ce_weight=1.0, kd_weight=1.0)(inp)
    assert_close_to(out["ce"], torch.nn.functional.cross_entropy(inp.student_logits[mask], inp.target[mask]))
    # DKD uses the teacher's top class where no label is available.
    dkd = DKD(warmup_epochs=0)(inp)
    y = torch.where(mask, inp.target, inp.teacher_logits.argmax(-1))
    assert_close_to(dkd["dkd"], KF.dkd_loss(inp.student_logits, inp.teacher_logits, y))


def test_zero_ce_weight_skips_ce():
    out = KD(ce_weight=0.0, kd_weight=1.0)(make_inputs())
    assert float(out["ce"]) == 0.0
    assert_close_to(out["loss"], out["kd"])
    assert KD(ce_weight=0.0).needs_target is False and KD().needs_target is True


def test_kd_objective_takes_the_fused_path_only_where_it_is_exact():
    mask = torch.tensor([True, True, False, False, True, False])
    inp = make_inputs(labeled=mask)
    fast = KD(temperature=4.0, ce_weight=0.2, kd_weight=0.8)
    slow = KD(temperature=4.0, ce_weight=0.2, kd_weight=0.8)
    slow._fused = False
    a, b = fast(inp), slow(inp)
    assert fast._fused and set(a) == set(b)
    for name in a:
        assert_close_to(a[name], b[name], 1e-6)
    (ga,) = torch.autograd.grad(a["loss"], inp.student_logits)
    (gb,) = torch.autograd.grad(b["loss"], inp.student_logits)
    assert torch.allclose(ga, gb, atol=1e-6)
    # Reverse KL, standardization, label smoothing and a zero weight keep the composite objective.
    for kwargs in ({"divergence": "reverse"}, {"standardize": True}, {"label_smoothing": 0.1}, {"kd_weight": 0.0}):
        assert not KD(**kwargs)._fused
    # A teacher that is being trained (mutual learning) gets its gradient through the composite path.
    t = inp.teacher_logits.clone().requires_grad_()
    out = fast(DistillInputs(student_logits=inp.student_logits, teacher_logits=t, target=inp.target))
    out["loss"].backward()
    assert t.grad is not None and torch.isfinite(t.grad).all()
