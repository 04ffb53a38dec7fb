"""kd_lightning/losses/functional/response.py: KD, DKD, DIST, logit MSE and the fused KD+CE terms checked against
REFERENCE.md through independent numpy computations; gradients, stability and dtypes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_lightning.losses import functional as KF

from ..helpers import assert_close_to, logits

TEMPERATURES = [1.0, 2.0, 4.0, 8.0]


# ------------------------------------------------------------------------------- numpy references
def np_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(a, b):
    """Row-wise KL(a‖b) with 0·log 0 = 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    safe = np.where(a > 0, a, 1.0)
    return np.where(a > 0, a * (np.log(safe) - np.log(b)), 0.0).sum(axis=-1)


def np_standardize(z, eps=1e-7):
    z = np.asarray(z, np.float64)
    return (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + eps)


def np_kd(zs, zt, T, divergence="forward", standardize=False):
    if standardize:
        zs, zt = np_standardize(zs), np_standardize(zt)
    ps, pt = np_softmax(np.asarray(zs) / T), np_softmax(np.asarray(zt) / T)
    if divergence == "forward":
        per = np_kl(pt, ps)
    elif divergence == "reverse":
        per = np_kl(ps, pt)
    else:
        m = (ps + pt) / 2
        per = 0.5 * (np_kl(ps, m) + np_kl(pt, m))
    return T ** 2 * per.sum() / len(per)


def np_dkd_terms(zs, zt, y, T):
    zs, zt = np.asarray(zs, np.float64), np.asarray(zt, np.float64)
    B, C = zs.shape
    tckd = nckd = 0.0
    for i in range(B):
        ps, pt = np_softmax(zs[i] / T), np_softmax(zt[i] / T)
        bs = np.array([ps[y[i]], 1 - ps[y[i]]])
        bt = np.array([pt[y[i]], 1 - pt[y[i]]])
        tckd += np_kl(bt, bs)
        others = [c for c in range(C) if c != y[i]]
        nckd += np_kl(np_softmax(zt[i, others] / T), np_softmax(zs[i, others] / T))
    return T ** 2 * tckd / B, T ** 2 * nckd / B


def np_pearson(a, b, eps=1e-8):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + eps)


def np_dist_terms(zs, zt, tau):
    ys, yt = np_softmax(np.asarray(zs) / tau), np_softmax(np.asarray(zt) / tau)
    B, C = ys.shape
    inter = tau ** 2 * (1 - np.mean([np_pearson(ys[i], yt[i]) for i in range(B)]))
    intra = tau ** 2 * (1 - np.mean([np_pearson(ys[:, c], yt[:, c]) for c in range(C)]))
    return inter, intra


@pytest.fixture
def pair():
    return logits(seed=1), logits(seed=2), torch.tensor([0, 3, 6, 2, 3])


# ---------------------------------------------------------------------------------------------- KD
def test_kd_hand_computed_two_samples_three_classes():
    # Student uniform; teacher sample 1 softmax(z/T) = [1/2, 1/4, 1/4], sample 2 identical to the student.
    for T in TEMPERATURES:
        zs = torch.zeros(2, 3)
        zt = torch.tensor([[T * math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
        forward = math.log(3) - 1.5 * math.log(2)        # KL([.5,.25,.25] ‖ uniform)
        reverse = 5.0 / 3.0 * math.log(2) - math.log(3)  # KL(uniform ‖ [.5,.25,.25])
        assert_close_to(KF.kd_loss(zs, zt, T), T ** 2 * forward / 2)
        assert_close_to(KF.kd_loss(zs, zt, T, divergence="reverse"), T ** 2 * reverse / 2)
    # A concrete scalar at T=4: 16 · (ln 3 − 1.5 ln 2) / 2
    assert_close_to(KF.kd_loss(torch.zeros(2, 3), torch.tensor([[4 * math.log(2.0), 0, 0], [0.0, 0, 0]]), 4.0), 0.4711321, 1e-6)


@pytest.mark.parametrize("T", TEMPERATURES)
@pytest.mark.parametrize("divergence", ["forward", "reverse", "js"])
@pytest.mark.parametrize("standardize", [False, True])
def test_kd_matches_numpy(pair, T, divergence, standardize):
    zs, zt, _ = pair
    got = KF.kd_loss(zs, zt, T, divergence=divergence, standardize=standardize)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert_close_to(got, np_kd(zs.numpy(), zt.numpy(), T, divergence, standardize))


def test_kd_properties(pair):
    zs, zt, _ = pair
    for div in ("forward", "reverse", "js"):
        assert_close_to(KF.kd_loss(zt, zt, 4.0, divergence=div), 0.0, 1e-6)
        assert KF.kd_loss(zs, zt, 4.0, divergence=div) > 0
    # JS is symmetric and bounded by T² ln 2.
    assert_close_to(KF.kd_loss(zs, zt, 2.0, "js"), KF.kd_loss(zt, zs, 2.0, "js"))
    assert KF.kd_loss(zs * 50, -zt * 50, 2.0, "js") <= 4 * math.log(2) + 1e-5
    # Standardization makes the loss invariant to shifting and scaling each logit vector.
    assert_close_to(KF.kd_loss(zs * 3 + 5, zt, 2.0, standardize=True), KF.kd_loss(zs, zt, 2.0, standardize=True))


def test_kd_rejects_bad_arguments(pair):
    zs, zt, _ = pair
    for T in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            KF.kd_loss(zs, zt, T)
    with pytest.raises(ValueError, match="divergence"):
        KF.kd_loss(zs, zt, 4.0, divergence="tv")
    with pytest.raises(ValueError, match="shape"):
        KF.kd_loss(zs, zt[:, :-1])


def test_logit_standardize_matches_numpy(pair):
    zs, _, _ = pair
    z = KF.logit_standardize(zs)
    np.testing.assert_allclose(z.numpy(), np_standardize(zs.numpy()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z.mean(-1).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(z.std(-1).numpy(), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------------- DKD
@pytest.mark.parametrize("T", TEMPERATURES)
def test_dkd_matches_numpy(pair, T):
    zs, zt, y = pair
    tckd, nckd = KF.dkd_terms(zs, zt, y, T)
    ref_t, ref_n = np_dkd_terms(zs.numpy(), zt.numpy(), y.numpy(), T)
    assert_close_to(tckd, ref_t)
    assert_close_to(nckd, ref_n)
    assert_close_to(KF.dkd_loss(zs, zt, y, alpha=0.7, beta=3.0, temperature=T), 0.7 * ref_t + 3.0 * ref_n)
    assert_close_to(KF.dkd_loss(zs, zt, y), np.dot([1.0, 8.0], np_dkd_terms(zs.numpy(), zt.numpy(), y.numpy(), 4.0)))


@pytest.mark.parametrize("T", TEMPERATURES)
def test_dkd_reformulates_kd_per_sample(pair, T):
    # Zhao et al. eq. (1): KL(p_t‖p_s) = TCKD + (1 − p_t,y) · NCKD for each sample, hence α=β=1 DKD ≥ KD.
    zs, zt, y = pair
    for i in range(zs.shape[0]):
        s, t, yi = zs[i:i + 1], zt[i:i + 1], y[i:i + 1]
        tckd, nckd = KF.dkd_terms(s, t, yi, T)
        pt_y = torch.softmax(t / T, -1)[0, yi[0]]
        assert_close_to(KF.kd_loss(s, t, T), tckd + (1 - pt_y) * nckd)
    assert KF.dkd_loss(zs, zt, y, alpha=1.0, beta=1.0, temperature=T) >= KF.kd_loss(zs, zt, T) - 1e-6


def test_dkd_zero_when_student_equals_teacher(pair):
    _, zt, y = pair
    tckd, nckd = KF.dkd_terms(zt, zt, y, 4.0)
    assert_close_to(tckd, 0.0, 1e-6)
    assert_close_to(nckd, 0.0, 1e-6)


# -------------------------------------------------------------------------------------------- DIST
@pytest.mark.parametrize("T", TEMPERATURES)
def test_dist_matches_numpy(pair, T):
    zs, zt, _ = pair
    inter, intra = KF.dist_terms(zs, zt, T)
    ref_inter, ref_intra = np_dist_terms(zs.numpy(), zt.numpy(), T)
    assert_close_to(inter, ref_inter)
    assert_close_to(intra, ref_intra)
    assert_close_to(KF.dist_loss(zs, zt, beta=2.0, gamma=0.5, temperature=T), 2.0 * ref_inter + 0.5 * ref_intra)


def test_dist_perfect_correlation_is_zero(pair):
    _, zt, _ = pair
    inter, intra = KF.dist_terms(zt, zt, 4.0)
    # Not exactly 0: the 1e-8 in the denominator weighs in when the columns vary little (×τ² = 16).
    assert_close_to(inter, 0.0, 1e-4)
    assert_close_to(intra, 0.0, 1e-4)


# --------------------------------------------------------------------------------------------- MSE
def test_logit_mse_matches_numpy(pair):
    zs, zt, _ = pair
    assert_close_to(KF.logit_mse(zs, zt), ((zs.double().numpy() - zt.double().numpy()) ** 2).mean())


# ------------------------------------------------------------------ gradients, stability, dtypes
FUNCTIONALS = {
    "kd_forward": lambda s, t, y, T=2.0: KF.kd_loss(s, t, T),
    "kd_reverse": lambda s, t, y, T=2.0: KF.kd_loss(s, t, T, divergence="reverse"),
    "kd_js": lambda s, t, y, T=2.0: KF.kd_loss(s, t, T, divergence="js"),
    "kd_standardized": lambda s, t, y, T=2.0: KF.kd_loss(s, t, T, standardize=True),
    "dkd": lambda s, t, y, T=4.0: KF.dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=T),
    "dist": lambda s, t, y, T=2.0: KF.dist_loss(s, t, temperature=T),
    "mse": lambda s, t, y, T=None: KF.logit_mse(s, t),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONALS))
def test_gradcheck_double(name):
    fn = FUNCTIONALS[name]
    s = logits(3, 4, seed=3, dtype=torch.float64).requires_grad_()
    t = logits(3, 4, seed=4, dtype=torch.float64).requires_grad_()
    y = torch.tensor([0, 2, 3])
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, y), (s, t), eps=1e-6, atol=1e-5)


def test_gradcheck_logit_standardize():
    z = logits(3, 5, seed=5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: KF.logit_standardize(a), (z,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FUNCTIONALS))
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_stable_for_large_logits_and_many_classes(name, T):
    fn = FUNCTIONALS[name]
    s = (logits(8, 1000, seed=6) * 100).requires_grad_()
    t = (logits(8, 1000, seed=7) * 100).requires_grad_()
    y = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(0))
    value = fn(s, t, y, T)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()


def test_dkd_stable_when_target_dominates():
    # p_y → 1 in fp32: 1 − p_y would underflow if computed by subtraction.
    s = torch.zeros(2, 1000)
    t = torch.zeros(2, 1000)
    s[:, 0], t[:, 0] = 300.0, 500.0
    s.requires_grad_()
    tckd, nckd = KF.dkd_terms(s, t, torch.tensor([0, 0]), 1.0)
    (tckd + nckd).backward()
    assert torch.isfinite(tckd) and torch.isfinite(nckd) and torch.isfinite(s.grad).all()
    assert nckd.abs() < 1e-5  # identical non-target distributions


@pytest.mark.parametrize("name", sorted(FUNCTIONALS))
def test_bf16_inputs_give_fp32_results(name):
    fn = FUNCTIONALS[name]
    s, t = logits(6, 10, seed=8), logits(6, 10, seed=9)
    y = torch.tensor([0, 1, 2, 3, 4, 9])
    sb, tb = s.bfloat16(), t.bfloat16()
    got = fn(sb, tb, y)
    assert got.dtype == torch.float32
    # Exactly the fp32 computation on the bf16-rounded values, and close to the unrounded one.
    torch.testing.assert_close(got, fn(sb.float(), tb.float(), y))
    torch.testing.assert_close(got, fn(s, t, y), rtol=5e-2, atol=5e-2)


def test_mixed_dtype_inputs():
    s, t = logits(seed=10), logits(seed=11)
    assert KF.kd_loss(s.bfloat16(), t, 4.0).dtype == torch.float32
    assert KF.kd_loss(s.half(), t.bfloat16(), 4.0).dtype == torch.float32
    assert KF.kd_loss(s.double(), t, 4.0).dtype == torch.float64


# ----------------------------------------------------------------- the fused Hinton objective
def _composite_kd_ce(zs, zt, y, labeled, temperature, ce_weight, kd_weight):
    """The objective written from REFERENCE.md's formulas with autograd doing the gradient."""
    if labeled is None:
        ce = torch.nn.functional.cross_entropy(zs, y)
    else:
        per = torch.nn.functional.cross_entropy(zs, y.clamp_min(0), reduction="none")
        ce = (per * labeled).sum() / labeled.sum().clamp_min(1)
    log_ps = torch.log_softmax(zs / temperature, -1)
    log_pt = torch.log_softmax(zt / temperature, -1)
    kd = (log_pt.exp() * (log_pt - log_ps)).sum() / zs.shape[0] * temperature ** 2
    return ce_weight * ce + kd_weight * kd, ce, kd


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("mask", ["none", "some", "all_unlabeled"])
def test_kd_ce_terms_match_the_composite_objective_and_its_gradient(temperature, mask):
    torch.manual_seed(3)
    zs = (3 * torch.randn(8, 6, dtype=torch.float64)).requires_grad_()
    zt = 3 * torch.randn(8, 6, dtype=torch.float64)
    y = torch.randint(0, 6, (8,))
    labeled = {"none": None, "some": torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool),
               "all_unlabeled": torch.zeros(8, dtype=torch.bool)}[mask]
    if labeled is not None:
        y = torch.where(labeled, y, -1)  # transfer-set samples carry no label
    got = KF.kd_ce_terms(zs, zt, y, labeled, temperature, 0.3, 0.7)
    want = _composite_kd_ce(zs, zt, y, labeled, temperature, 0.3, 0.7)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-12)
    assert not got[1].requires_grad and not got[2].requires_grad  # the logged terms are detached
    (g_got,) = torch.autograd.grad(got[0], zs)
    (g_want,) = torch.autograd.grad(want[0], zs)
    assert torch.allclose(g_got, g_want, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: KF.kd_ce_terms(z, zt, y, labeled, temperature, 0.3, 0.7)[0], (zs,))


def test_kd_ce_terms_hand_values_and_low_precision_inputs():
    # One sample, two classes, T = 1: CE = log(1 + e^-1) for z_s = [1, 0], y = 0; p_t = [1/2, 1/2].
    zs, zt, y = torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.tensor([0])
    loss, ce, kd = KF.kd_ce_terms(zs, zt, y, None, 1.0, 0.5, 0.5)
    p1 = 1 / (1 + math.exp(-1))
    kd_hand = 0.5 * math.log(0.5 / p1) + 0.5 * math.log(0.5 / (1 - p1))
    assert_close_to(ce, math.log(1 + math.exp(-1)))
    assert_close_to(kd, kd_hand)
    assert_close_to(loss, 0.5 * math.log(1 + math.exp(-1)) + 0.5 * kd_hand)
    out = KF.kd_ce_terms(logits(4, 5).bfloat16(), logits(4, 5, seed=1).half(), torch.tensor([0, 1, 2, 3]))
    assert all(t.dtype == torch.float32 for t in out)
    with pytest.raises(ValueError, match="same shape"):
        KF.kd_ce_terms(logits(4, 5), logits(4, 6), torch.tensor([0, 1, 2, 3]))


