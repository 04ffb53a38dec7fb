"""kd_lightning/losses/functional/hint.py: hcl_loss (ReviewKD), ft_loss (FT), ab_loss (AB) against torchdistill 1.1.5
on the same tensors and against hand computations."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.losses import functional as KF


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -------------------------------------------------------------------------------------------- hcl
@pytest.mark.parametrize("size", [8, 4, 2, 1])
def test_hcl_matches_torchdistill(size):
    from torchdistill.losses.mid_level import HierarchicalContextLoss

    s, t = rand(3, 5, size, size, seed=1), rand(3, 5, size, size, seed=2)
    ref = HierarchicalContextLoss("s", "output", "t", "output")({"s": {"output": (s, None)}}, {"t": {"output": t}})
    torch.testing.assert_close(KF.hcl_loss(s, t), ref)


def test_hcl_by_hand_on_a_4x4_map():
    # h = 4: level 4 is skipped, 2 gets weight 1/2 and 1 gets 1/4; the sum is divided by 1 + 1/2 + 1/4.
    s, t = rand(2, 3, 4, 4, seed=3), rand(2, 3, 4, 4, seed=4)
    full = ((s - t) ** 2).mean()
    two = ((s - t).reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5)) ** 2).mean()  # 2x2 blocks of 2x2
    one = ((s - t).mean(dim=(2, 3)) ** 2).mean()
    torch.testing.assert_close(KF.hcl_loss(s, t), (full + 0.5 * two + 0.25 * one) / 1.75)
    # the levels are the caller's: only the full size when every level is as large as the map
    torch.testing.assert_close(KF.hcl_loss(s, t, levels=(4, 8)), full)


def test_hcl_on_sequences_pools_along_the_length():
    s, t = rand(2, 3, 10, seed=5), rand(2, 3, 10, seed=6)
    d = s - t
    four = F.adaptive_avg_pool1d(d, 4)  # linear, so pooling the difference is pooling each side
    expected = ((d ** 2).mean() + 0.5 * (four ** 2).mean() + 0.25 * (F.adaptive_avg_pool1d(d, 2) ** 2).mean()
                + 0.125 * (d.mean(2) ** 2).mean()) / (1 + 0.5 + 0.25 + 0.125)
    torch.testing.assert_close(KF.hcl_loss(s, t), expected)
    torch.testing.assert_close(KF.hcl_loss(s[:, :, 0], t[:, :, 0]), ((s - t)[:, :, 0] ** 2).mean())  # vectors: MSE


def test_hcl_refuses_different_widths_and_bad_levels():
    with pytest.raises(ValueError, match="fusion module"):
        KF.hcl_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    with pytest.raises(ValueError, match="positive"):
        KF.hcl_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), levels=(2, 0))


# --------------------------------------------------------------------------------------------- ft
def test_ft_matches_torchdistill_in_both_of_its_forms():
    from torchdistill.losses.mid_level import FTLoss

    s, t = rand(4, 6, 3, 3, seed=7), rand(4, 6, 3, 3, seed=8)
    io_s, io_t = {"translator": {"output": s}}, {"paraphraser": {"output": t}}
    # torchdistill's p=1 is the element mean (the authors' code), its p=2 the per-sample norm (the paper's)
    torch.testing.assert_close(KF.ft_loss(s, t, p=1, mode="code"), FTLoss(p=1)(io_s, io_t))
    torch.testing.assert_close(KF.ft_loss(s, t, p=2, mode="paper"), FTLoss(p=2)(io_s, io_t))


def test_ft_by_hand():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 2.0], [0.0, -5.0]], dtype=torch.float64)
    # normalised: s -> (0.6, 0.8), (1, 0); t -> (0, 1), (0, -1); |diff| = (0.6, 0.2), (1, 1)
    torch.testing.assert_close(KF.ft_loss(s, t), torch.tensor(2.8 / 4, dtype=torch.float64))
    torch.testing.assert_close(KF.ft_loss(s, t, mode="paper"), torch.tensor((0.8 + 2.0) / 2, dtype=torch.float64))
    # the scale of either factor does not matter, and the factor of a 1-D map is its flattened values
    torch.testing.assert_close(KF.ft_loss(7 * s[:, None], t[:, None]), KF.ft_loss(s, t))
    with pytest.raises(ValueError, match="mode"):
        KF.ft_loss(s, t, mode="other")
    with pytest.raises(ValueError, match="factor width"):
        KF.ft_loss(torch.ones(2, 3, 4), torch.ones(2, 5, 4))


# --------------------------------------------------------------------------------------------- ab
@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_matches_torchdistill(margin):
    from torchdistill.losses.mid_level import AltActTransferLoss

    s, t = rand(3, 4, 5, 5, seed=9), rand(3, 4, 5, 5, seed=10)
    pairs = {"p": {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}, "weight": 1}}
    ref = AltActTransferLoss(pairs, margin=margin, reduction="mean")({"s": {"output": s}}, {"t": {"output": t}})
    torch.testing.assert_close(KF.ab_loss(s, t, margin), ref)


def test_ab_by_hand_on_sequences():
    s = torch.tensor([[[2.0, 0.5, -0.5, -3.0]]])
    t = torch.tensor([[[1.0, 1.0, 0.0, -1.0]]])
    # active teacher neurons want s >= m: (2: 0), (0.5: 0.25); inactive want s <= -m: (-0.5: 0.25), (-3: 0)
    torch.testing.assert_close(KF.ab_loss(s, t), torch.tensor(0.5))
    torch.testing.assert_close(KF.ab_loss(s.repeat(4, 1, 1), t.repeat(4, 1, 1)), torch.tensor(0.5))  # per sample
    # a post-ReLU teacher gives the same boundaries as its pre-activation
    torch.testing.assert_close(KF.ab_loss(s, t.relu()), KF.ab_loss(s, t))
    torch.testing.assert_close(KF.ab_loss(s, t, margin=0.0), torch.tensor(0.0))
