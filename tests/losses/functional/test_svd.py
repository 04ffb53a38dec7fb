"""KDSVD's functional core (kd_lightning/losses/functional/svd.py) against a NumPy computation of its steps."""
import numpy as np
import pytest
import torch

from kd_lightning.losses.functional import feature_singular_vectors, kdsvd_loss


def compressed(f, k, over):
    """NumPy: the k leading right singular vectors of each sample's matrix and the normalised singular values."""
    out_v, out_s = [], []
    for m in f:
        m = m.reshape(m.shape[0], -1)
        m = m if over == "positions" else m.T
        _, s, vh = np.linalg.svd(m, full_matrices=False)
        v = vh[:k].T
        v = v * np.where(v[np.abs(v).argmax(0), np.arange(v.shape[1])] < 0, -1.0, 1.0)  # largest entry positive
        out_v.append(v)
        out_s.append(s[:k] / np.linalg.norm(s[:k]))
    return np.stack(out_v), np.stack(out_s)


def by_hand(student, teacher, k=1, over="positions", gamma=8.0):
    total, prev = 0.0, None
    for fs, ft in zip(student, teacher):
        vt, st = compressed(ft, k, over)
        vs_all, _ = compressed(fs, k + 3, over)
        vs = np.zeros_like(vt)
        for b in range(vt.shape[0]):
            for j in range(k):
                cos = vs_all[b].T @ vt[b, :, j]
                i = int(np.argmax(np.abs(cos)))
                vs[b, :, j] = vs_all[b, :, i] * np.sign(cos[i])
        vs, vt = vs * st[:, None, :], vt * st[:, None, :]
        if prev is not None:
            rs = np.exp(-(vs[:, :, None, :] - prev[0][:, None, :, :]) ** 2 / gamma)
            rt = np.exp(-(vt[:, :, None, :] - prev[1][:, None, :, :]) ** 2 / gamma)
            total += ((rs - rt) ** 2).sum() / vt.shape[0]
        prev = (vs, vt)
    return total


def maps(seed, widths, sizes, b=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, *s, generator=g, dtype=torch.float64) for c, s in zip(widths, sizes)]


@pytest.mark.parametrize("over,k", [("positions", 1), ("positions", 2), ("channels", 1)])
def test_kdsvd_matches_the_steps_computed_in_numpy(over, k):
    sizes = [(6, 6), (3, 3), (3, 2)]
    student = maps(0, [8, 8, 8], sizes)
    teacher = maps(1, [8 if over == "channels" else 16] * 3, sizes)
    expected = by_hand([f.numpy() for f in student], [f.numpy() for f in teacher], k, over)
    assert float(kdsvd_loss(student, teacher, k, over)) == pytest.approx(expected, rel=1e-6)


def test_singular_vectors_are_unit_and_values_normalised():
    v, s = feature_singular_vectors(maps(2, [5], [(4,)])[0], 2)
    assert v.shape == (3, 4, 2) and s.shape == (3, 2)
    assert torch.allclose(v.norm(dim=1), torch.ones(3, 2, dtype=v.dtype))
    assert torch.allclose(s.norm(dim=1), torch.ones(3, dtype=s.dtype))


def test_kdsvd_is_zero_for_the_teacher_itself_and_sign_blind():
    teacher = maps(3, [6, 6], [(10,), (5,)])
    assert float(kdsvd_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-12)
    student = maps(4, [4, 4], [(10,), (5,)])
    flipped = [-f for f in student]  # singular vectors are defined up to sign: the alignment removes it
    assert float(kdsvd_loss(flipped, teacher)) == pytest.approx(float(kdsvd_loss(student, teacher)), rel=1e-9)


def test_gradient_reaches_the_student_only_and_stays_finite():
    student = [f.requires_grad_() for f in maps(5, [4, 4], [(10,), (5,)])]
    teacher = [f.requires_grad_() for f in maps(6, [8, 8], [(10,), (5,)])]
    kdsvd_loss(student, teacher).backward()
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in student)
    assert all(f.grad is None for f in teacher)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="at least|>= 2"):
        kdsvd_loss(maps(0, [4], [(5,)]), maps(1, [4], [(5,)]))
    with pytest.raises(ValueError, match="equal widths"):
        kdsvd_loss(maps(0, [4, 4], [(5,), (3,)]), maps(1, [8, 8], [(5,), (3,)]), over="channels")
    with pytest.raises(ValueError, match="over"):
        kdsvd_loss(maps(0, [4, 4], [(5,), (3,)]), maps(1, [4, 4], [(5,), (3,)]), over="rows")
