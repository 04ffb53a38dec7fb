"""kd_lightning/losses/functional/correlation.py: fsp_matrix / fsp_loss (FSP) and channel_correlation / ickd_loss (ICKD)
against torchdistill 1.1.5 on the same tensors where it follows the paper, and against hand computations."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.losses import functional as KF


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -------------------------------------------------------------------------------------------- FSP
def test_fsp_matrix_matches_torchdistill_and_the_definition():
    from torchdistill.losses.mid_level import FSPLoss

    a, b = rand(2, 3, 4, 4, seed=1), rand(2, 5, 4, 4, seed=2)
    g = KF.fsp_matrix(a, b)
    torch.testing.assert_close(g, FSPLoss.compute_fsp_matrix(a, b))
    assert g.shape == (2, 3, 5)
    torch.testing.assert_close(g[1, 2, 4], (a[1, 2] * b[1, 4]).sum() / 16)
    # 1-D maps: the mean over positions of the channel products
    x, y = rand(2, 3, 7, seed=3), rand(2, 2, 7, seed=4)
    torch.testing.assert_close(KF.fsp_matrix(x, y), torch.einsum("bil,bjl->bij", x, y) / 7)
    # a larger map is average-pooled to the smaller one first
    a8 = rand(2, 3, 8, 8, seed=5)
    torch.testing.assert_close(KF.fsp_matrix(a8, b), KF.fsp_matrix(F.adaptive_avg_pool2d(a8, 4), b))


def test_fsp_loss_follows_the_paper_by_hand():
    s1, s2, t1, t2 = (rand(3, 2, 5, seed=i) for i in range(10, 14))
    gs = torch.einsum("bil,bjl->bij", s1, s2) / 5
    gt = torch.einsum("bil,bjl->bij", t1, t2) / 5
    paper = ((gt - gs) ** 2).sum(dim=(1, 2)).mean()  # (1/N) Σ_x ‖G_t − G_s‖²_F
    torch.testing.assert_close(KF.fsp_loss(s1, s2, t1, t2, mode="paper"), paper)
    torch.testing.assert_close(KF.fsp_loss(s1, s2, t1, t2), paper / 4)  # code: the element mean (C1·C2 = 4)


def test_fsp_loss_departs_from_torchdistill_which_departs_from_the_paper():
    from torchdistill.losses.mid_level import FSPLoss

    s1, s2, t1, t2 = (rand(3, 4, 4, 4, seed=i) for i in range(20, 24))
    path = {k: {"io": "output", "path": k} for k in ("s1", "s2", "t1", "t2")}
    loss = FSPLoss({"p": {"student_first": path["s1"], "student_second": path["s2"], "teacher_first": path["t1"],
                          "teacher_second": path["t2"], "weight": 1}})
    ref = loss({"s1": {"output": s1}, "s2": {"output": s2}}, {"t1": {"output": t1}, "t2": {"output": t2}})
    diff = KF.fsp_matrix(s1, s2) - KF.fsp_matrix(t1, t2)
    torch.testing.assert_close(ref, diff.norm(dim=1).sum() / 3)  # torchdistill: unsquared norms over one axis
    assert not torch.isclose(KF.fsp_loss(s1, s2, t1, t2, mode="paper"), ref)


def test_fsp_loss_needs_equal_channel_counts():
    with pytest.raises(ValueError, match="equal channel counts"):
        KF.fsp_loss(torch.ones(2, 3, 4), torch.ones(2, 3, 4), torch.ones(2, 5, 4), torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="mode"):
        KF.fsp_loss(*(torch.ones(2, 3, 4),) * 4, mode="other")


# ------------------------------------------------------------------------------------------- ICKD
def test_ickd_is_torchdistill_chsim_times_the_batch_size():
    from torchdistill.losses.mid_level import ChSimLoss

    s, t = rand(4, 6, 3, 3, seed=30), rand(4, 6, 5, 5, seed=31)  # spatial sizes may differ: C x C matrices
    pairs = {"p": {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}, "weight": 1}}
    ref = ChSimLoss(pairs)({"s": {"output": s}}, {"t": {"output": t}})
    # the authors' CIFAR code divides by B·C; torchdistill's port of their ImageNet code by B²·C
    torch.testing.assert_close(KF.ickd_loss(s, t), 4 * ref)


def test_ickd_by_hand():
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # channels orthogonal: G = diag(1, 4) -> rows e1, e2
    t = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])  # channels equal: G = all 2 -> rows (1, 1)/√2
    g = KF.channel_correlation(s)
    torch.testing.assert_close(g, torch.eye(2)[None])
    r = 2 ** -0.5
    expected = ((1 - r) ** 2 + r ** 2) * 2 / (1 * 2)  # two rows, each ‖e_i − (r, r)‖², over B·C = 2
    torch.testing.assert_close(KF.ickd_loss(s, t), torch.tensor(expected))
    torch.testing.assert_close(KF.ickd_loss(3 * s, t), KF.ickd_loss(s, t))  # scale-free rows
    with pytest.raises(ValueError, match="embedding"):
        KF.ickd_loss(torch.ones(2, 3, 4), torch.ones(2, 5, 4))
