"""kd_lightning/losses/functional/relation.py: RKD, PKT, CC and the CRD NCE loss checked against REFERENCE.md through
independent numpy code; gradients and reduced-precision inputs."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from kd_lightning.losses import functional as KF


RNG = np.random.default_rng(0)


def t64(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


def np_smooth_l1(a, b):
    d = np.abs(np.asarray(a) - np.asarray(b))
    return np.where(d < 1.0, 0.5 * d ** 2, d - 0.5).mean()


def np_rkd_terms(es, et):
    es, et = es.reshape(len(es), -1).astype(np.float64), et.reshape(len(et), -1).astype(np.float64)
    n = len(es)

    def dist(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) if i != j else 0.0 for j in range(n)] for i in range(n)])
        return d / d[d > 0].mean()

    def angles(e):
        out = np.zeros((n, n, n))
        for i, j, k in itertools.product(range(n), repeat=3):
            u, v = e[j] - e[i], e[k] - e[i]
            nu, nv = np.linalg.norm(u), np.linalg.norm(v)
            if nu > 0 and nv > 0:
                out[i, j, k] = u @ v / (nu * nv)
        return out

    return np_smooth_l1(dist(es), dist(et)), np_smooth_l1(angles(es), angles(et))


def np_pkt(es, et, eps=1e-7):
    def probs(e):
        e = e.reshape(len(e), -1).astype(np.float64)
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        s = (e @ e.T + 1) / 2
        return s / s.sum(1, keepdims=True)

    ps, pt = probs(es), probs(et)
    return (pt * np.log((pt + eps) / (ps + eps))).mean()


def np_cc(es, et, kernel="gaussian", gamma=0.4, order=2):
    def corr(e):
        e = e.reshape(len(e), -1).astype(np.float64)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        s = e @ e.T
        if kernel == "bilinear":
            return s
        return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * s ** p for p in range(order + 1))

    return ((corr(et) - corr(es)) ** 2).mean()


def np_nce(x, n_data, eps=1e-7):
    x = np.asarray(x, np.float64)
    k = x.shape[1] - 1
    pn = 1.0 / n_data
    pos, neg = x[:, 0], x[:, 1:]
    return -(np.log(pos / (pos + k * pn + eps)).sum() + np.log(k * pn / (neg + k * pn + eps)).sum()) / x.shape[0]


# --------------------------------------------------------------------------------------------- RKD
@pytest.mark.parametrize("dims", [(8, 8), (6, 16), (12, 4)])
def test_rkd_terms_match_reference(dims):
    es, et = RNG.normal(size=(5, dims[0])), RNG.normal(size=(5, dims[1]))
    d, a = KF.rkd_terms(t64(es), t64(et))
    ref_d, ref_a = np_rkd_terms(es, et)
    assert d.item() == pytest.approx(ref_d, rel=1e-8)
    assert a.item() == pytest.approx(ref_a, rel=1e-8)
    total = KF.rkd_loss(t64(es), t64(et))
    assert total.item() == pytest.approx(25 * ref_d + 50 * ref_a, rel=1e-8)
    assert KF.rkd_loss(t64(es), t64(et), 1.0, 0.0).item() == pytest.approx(ref_d, rel=1e-8)


def test_rkd_teacher_side_has_no_gradient_and_maps_are_flattened():
    s = torch.randn(4, 2, 3, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    KF.rkd_loss(s, t).backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()
    d, a = KF.rkd_terms(s.detach(), s.detach())
    assert d.item() == pytest.approx(0.0, abs=1e-7) and a.item() == pytest.approx(0.0, abs=1e-7)


def test_rkd_duplicate_samples_stay_finite():
    s = torch.randn(4, 6)
    s = torch.cat([s, s[:1]]).requires_grad_(True)  # two identical rows -> zero distance off the diagonal
    loss = KF.rkd_loss(s, torch.randn(5, 3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# --------------------------------------------------------------------------------------------- PKT
@pytest.mark.parametrize("s_dim,t_shape", [(10, (10,)), (4, (32,)), (3, (2, 2))])
def test_pkt_matches_reference(s_dim, t_shape):
    es, et = RNG.normal(size=(6, s_dim)), RNG.normal(size=(6,) + t_shape)
    assert KF.pkt_loss(t64(es), t64(et)).item() == pytest.approx(np_pkt(es, et), rel=1e-9)


def test_pkt_zero_rows_give_no_nan():
    s = torch.randn(4, 5)
    s[1] = 0.0
    assert torch.isfinite(KF.pkt_loss(s, torch.randn(4, 3)))


# ---------------------------------------------------------------------------------------------- CC
@pytest.mark.parametrize("kernel", ["gaussian", "bilinear"])
def test_cc_matches_reference(kernel):
    es, et = RNG.normal(size=(7, 5)), RNG.normal(size=(7, 11))
    assert KF.cc_loss(t64(es), t64(et), kernel=kernel).item() == pytest.approx(np_cc(es, et, kernel), rel=1e-10)


def test_cc_taylor_series_converges_to_gaussian_rbf():
    es, et = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 9))
    gamma = 0.4

    def rbf(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        d2 = ((e[:, None] - e[None]) ** 2).sum(-1)
        return np.exp(-gamma * d2)

    exact = ((rbf(et) - rbf(es)) ** 2).mean()
    assert KF.cc_loss(t64(es), t64(et), gamma=gamma, order=20).item() == pytest.approx(exact, rel=1e-8)


# --------------------------------------------------------------------------------------------- CRD
def test_crd_nce_matches_reference():
    x = RNG.uniform(0.01, 2.0, size=(4, 9))
    assert KF.crd_nce_loss(t64(x), 100).item() == pytest.approx(np_nce(x, 100), rel=1e-10)


# ------------------------------------------------------------------------------ dtypes and gradients
RELATION_LOSSES = [(KF.rkd_loss, ((4, 5), (4, 3))), (KF.pkt_loss, ((4, 5), (4, 3))), (KF.cc_loss, ((4, 5), (4, 3)))]


@pytest.mark.parametrize("fn,shapes", RELATION_LOSSES)
def test_gradcheck_student_side(fn, shapes):
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(*shapes[0], generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(*shapes[1], generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn,shapes", RELATION_LOSSES)
def test_reduced_precision_inputs_compute_in_fp32(fn, shapes, dtype):
    s, t = torch.randn(*shapes[0]), torch.randn(*shapes[1])
    low = fn(s.to(dtype), t.to(dtype))
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(fn(s.to(dtype).float(), t.to(dtype).float()).item(), rel=1e-5, abs=1e-7)
