"""kd_lightning/losses/functional/feature.py: AT, SP, NST, FitNet, VID and OFD checked against REFERENCE.md through
independent numpy code; gradients and reduced-precision inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from kd_lightning.losses import functional as KF

RNG = np.random.default_rng(0)


def t64(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


def t32(a):
    return torch.tensor(np.asarray(a, dtype=np.float32))


# ------------------------------------------------------------------------------- numpy references
def np_block_mean(f, size):
    """Average-pool the trailing spatial dims of f [B, C, *S] by an integer factor down to ``size``."""
    f = np.asarray(f, np.float64)
    if f.ndim == 3:
        b, c, l = f.shape
        return f.reshape(b, c, size[0], l // size[0]).mean(-1)
    b, c, h, w = f.shape
    return f.reshape(b, c, size[0], h // size[0], size[1], w // size[1]).mean(axis=(3, 5))


def np_attention(f, p=2):
    a = (np.abs(f) ** p).mean(axis=1).reshape(f.shape[0], -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def np_at(fs, ft, p=2, mode="code"):
    fs, ft = np.asarray(fs, np.float64), np.asarray(ft, np.float64)
    if fs.ndim == 2:
        fs, ft = fs[:, None], ft[:, None]
    size = tuple(min(a, b) for a, b in zip(fs.shape[2:], ft.shape[2:]))
    fs, ft = np_block_mean(fs, size), np_block_mean(ft, size)
    d = np_attention(fs, p) - np_attention(ft, p)
    if mode == "code":
        return (d ** 2).mean()
    return np.linalg.norm(d, axis=1).mean()


def np_sp(fs, ft):
    b = fs.shape[0]
    F_s, F_t = fs.reshape(b, -1).astype(np.float64), ft.reshape(b, -1).astype(np.float64)
    G_s, G_t = F_s @ F_s.T, F_t @ F_t.T
    G_s /= np.linalg.norm(G_s, axis=1, keepdims=True)
    G_t /= np.linalg.norm(G_t, axis=1, keepdims=True)
    return ((G_t - G_s) ** 2).sum() / b ** 2


def np_nst(fs, ft):
    fs, ft = np.asarray(fs, np.float64), np.asarray(ft, np.float64)
    b = fs.shape[0]
    total = 0.0
    for i in range(b):
        s = fs[i].reshape(fs.shape[1], -1)
        t = ft[i].reshape(ft.shape[1], -1)
        s = s / np.linalg.norm(s, axis=1, keepdims=True)
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
        k = lambda x, y: np.mean([(xi @ yj) ** 2 for xi in x for yj in y])
        total += k(t, t) + k(s, s) - 2 * k(s, t)
    return total / b


def np_vid(mu, t, log_scale, eps=1e-5):
    var = np.log1p(np.exp(np.asarray(log_scale, np.float64))) + eps
    var = var.reshape((1, -1) + (1,) * (np.ndim(t) - 2))
    return (0.5 * ((mu - t) ** 2 / var + np.log(var))).mean()


def np_ofd(s, t, margin):
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    m = np.asarray(margin, np.float64).reshape((1, -1) + (1,) * (t.ndim - 2))
    target = np.maximum(t, m)
    total = 0.0
    for idx in np.ndindex(s.shape):
        if s[idx] <= target[idx] and target[idx] <= 0:
            continue  # the partial L2 skips these positions
        total += (s[idx] - target[idx]) ** 2
    return total / s.shape[0]


# ---------------------------------------------------------------------------------------------- AT
@pytest.mark.parametrize("mode", ["code", "paper"])
@pytest.mark.parametrize("shapes", [((4, 3, 6, 6), (4, 5, 6, 6)),     # widths differ
                                    ((4, 3, 8, 8), (4, 7, 4, 4)),     # student map larger
                                    ((4, 3, 4, 4), (4, 7, 8, 8)),     # teacher map larger
                                    ((3, 2, 12), (3, 6, 6)),          # 1-d maps
                                    ((5, 12), (5, 6))])               # vectors: one-channel maps
def test_at_matches_reference(mode, shapes):
    fs, ft = RNG.normal(size=shapes[0]), RNG.normal(size=shapes[1])
    got = KF.at_loss(t64(fs), t64(ft), mode=mode)
    assert got.item() == pytest.approx(np_at(fs, ft, mode=mode), rel=1e-10, abs=1e-14)


def test_at_code_form_by_hand():
    # one sample, one channel, two positions: a = normalize([x1², x2²])
    fs = torch.tensor([[[[1.0, 0.0]]]])
    ft = torch.tensor([[[[0.0, 2.0]]]])
    # a_s = [1, 0], a_t = [0, 1]: mean((a_s - a_t)²) = (1 + 1) / 2
    assert KF.at_loss(fs, ft).item() == pytest.approx(1.0)
    assert KF.at_loss(fs, ft, mode="paper").item() == pytest.approx(math.sqrt(2.0))
    assert KF.at_loss(ft, ft).item() == 0.0


def test_at_p_and_errors():
    fs, ft = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 3, 4, 4))
    assert KF.at_loss(t64(fs), t64(ft), p=4).item() == pytest.approx(np_at(fs, ft, p=4), rel=1e-10)
    with pytest.raises(ValueError, match="mode"):
        KF.at_loss(t64(fs), t64(ft), mode="nope")
    with pytest.raises(ValueError, match="batch"):
        KF.at_loss(t64(fs), t64(ft[:1]))


def test_match_spatial_pools_larger_only():
    s, t = torch.randn(2, 3, 8, 6), torch.randn(2, 5, 4, 12)
    ps, pt = KF.match_spatial(s, t)
    assert ps.shape == (2, 3, 4, 6) and pt.shape == (2, 5, 4, 6)
    same = torch.randn(2, 3, 4, 4)
    assert KF.match_spatial(same, same)[0] is same


# ---------------------------------------------------------------------------------------------- SP
@pytest.mark.parametrize("shapes", [((6, 4, 3, 3), (6, 8, 2, 2)), ((5, 10), (5, 3, 4, 4)), ((4, 7), (4, 7))])
def test_sp_matches_reference(shapes):
    fs, ft = RNG.normal(size=shapes[0]), RNG.normal(size=shapes[1])
    assert KF.sp_loss(t64(fs), t64(ft)).item() == pytest.approx(np_sp(fs, ft), rel=1e-10)


def test_sp_zero_for_scaled_copy():
    f = torch.randn(4, 6)
    assert KF.sp_loss(3.0 * f, f).item() == pytest.approx(0.0, abs=1e-7)


# --------------------------------------------------------------------------------------------- NST
@pytest.mark.parametrize("shapes", [((3, 4, 5, 5), (3, 6, 5, 5)), ((2, 3, 8, 8), (2, 5, 4, 4)), ((2, 3, 10), (2, 2, 10))])
def test_nst_matches_reference(shapes):
    fs, ft = RNG.normal(size=shapes[0]), RNG.normal(size=shapes[1])
    size = tuple(min(a, b) for a, b in zip(fs.shape[2:], ft.shape[2:]))
    ref = np_nst(np_block_mean(fs, size), np_block_mean(ft, size))
    assert KF.nst_loss(t64(fs), t64(ft)).item() == pytest.approx(ref, rel=1e-9)


def test_nst_zero_for_identical_and_teacher_term_detached():
    f = torch.randn(2, 3, 4, 4)
    assert KF.nst_loss(f, f).item() == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(2, 5, 4, 4, requires_grad=True)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    KF.nst_loss(s, t).backward()
    assert s.grad is not None  # the cross term still reaches the teacher input, as in the authors' code
    assert t.grad is not None


# ------------------------------------------------------------------------------------------ FitNet
def test_fitnet_is_mse_and_pools_spatial_mismatch():
    s, t = RNG.normal(size=(3, 4, 6, 6)), RNG.normal(size=(3, 4, 6, 6))
    assert KF.fitnet_loss(t64(s), t64(t)).item() == pytest.approx(((s - t) ** 2).mean(), rel=1e-12)
    s2 = RNG.normal(size=(3, 4, 8, 8))
    ref = ((np_block_mean(s2, (4, 4)) - t[..., :4, :4]) ** 2).mean()
    assert KF.fitnet_loss(t64(s2), t64(t[..., :4, :4])).item() == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="regress"):
        KF.fitnet_loss(torch.randn(3, 2, 4, 4), torch.randn(3, 4, 4, 4))


# --------------------------------------------------------------------------------------------- VID
@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (4, 6), (2, 3, 7)])
def test_vid_matches_reference(shape):
    mu, t = RNG.normal(size=shape), RNG.normal(size=shape)
    log_scale = RNG.normal(size=shape[1])
    got = KF.vid_loss(t64(mu), t64(t), t64(log_scale))
    assert got.item() == pytest.approx(np_vid(mu, t, log_scale), rel=1e-10)


def test_vid_variance_gradient_points_to_the_error():
    mu, t = torch.zeros(8, 2), torch.full((8, 2), 3.0)
    log_scale = torch.zeros(2, requires_grad=True)
    KF.vid_loss(mu, t, log_scale).backward()
    assert (log_scale.grad < 0).all()  # a larger variance explains an error of 3 better than softplus(0)


# --------------------------------------------------------------------------------------------- OFD
@pytest.mark.parametrize("shape", [(3, 4, 3, 3), (5, 6), (2, 3, 5)])
def test_ofd_matches_reference(shape):
    s, t = RNG.normal(size=shape), RNG.normal(size=shape)
    margin = -np.abs(RNG.normal(size=shape[1]))
    assert KF.ofd_loss(t64(s), t64(t), t64(margin)).item() == pytest.approx(np_ofd(s, t, margin), rel=1e-10)


def test_ofd_partial_l2_by_hand():
    margin = torch.tensor([-1.0])
    t = torch.tensor([[-3.0, -0.5, 2.0, -2.0]])[:, None, :]  # targets after margin ReLU: -1, -0.5, 2, -1
    s = torch.tensor([[-4.0, 0.5, 1.0, -1.0]])[:, None, :]
    # position 0: s below a non-positive target -> skipped; 1: s above -> (1)²; 2: target > 0 -> (1)²;
    # position 3: s == target -> 0
    assert KF.ofd_loss(s, t, margin).item() == pytest.approx(2.0)


def test_ofd_margin_from_bn_is_the_gaussian_negative_mean():
    w, b = np.array([1.0, 2.0, 0.5, 0.1]), np.array([0.0, 1.0, -0.3, 5.0])
    got = KF.ofd_margin_from_bn(t32(w), t32(b)).numpy()
    for i in range(3):
        ref = norm.expect(lambda x: x, loc=b[i], scale=w[i], ub=0.0, conditional=True)
        assert got[i] == pytest.approx(ref, rel=1e-4)
    assert got[3] == pytest.approx(-0.3)  # almost no negative mass: the authors' -3σ fallback


def test_ofd_margin_from_samples():
    t = torch.tensor([[[-1.0, 2.0], [3.0, 4.0]], [[-3.0, 0.0], [1.0, -2.0]]])  # [B=2, C=2, L=2]
    total, count = KF.ofd_margin_from_samples(t)
    assert total.tolist() == [-4.0, -2.0] and count.tolist() == [2.0, 1.0]


# ------------------------------------------------------------------------------ dtypes and gradients
@pytest.mark.parametrize("fn,shapes", [
    (KF.at_loss, ((2, 3, 4, 4), (2, 5, 4, 4))),
    (KF.sp_loss, ((3, 4, 2, 2), (3, 6))),
    (KF.nst_loss, ((2, 3, 3, 3), (2, 2, 3, 3))),
    (KF.fitnet_loss, ((2, 3, 4), (2, 3, 4))),
])
def test_gradcheck_student_side(fn, shapes):
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(*shapes[0], generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(*shapes[1], generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s,), eps=1e-6, atol=1e-5)


def test_gradcheck_vid_and_ofd():
    gen = torch.Generator().manual_seed(2)
    mu = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    ls = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: KF.vid_loss(a, t, b), (mu, ls), eps=1e-6, atol=1e-5)
    margin = -torch.rand(4, dtype=torch.float64)
    s = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: KF.ofd_loss(a, t, margin), (s,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn,shapes", [
    (KF.at_loss, ((2, 3, 4, 4), (2, 5, 4, 4))), (KF.sp_loss, ((3, 4), (3, 6))),
    (KF.nst_loss, ((2, 3, 4), (2, 2, 4))),
])
def test_reduced_precision_inputs_compute_in_fp32(fn, shapes, dtype):
    s, t = torch.randn(*shapes[0]), torch.randn(*shapes[1])
    low = fn(s.to(dtype), t.to(dtype))
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(fn(s.to(dtype).float(), t.to(dtype).float()).item(), rel=1e-5, abs=1e-7)
