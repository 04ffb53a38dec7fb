"""DIST+ (kd_lightning/losses/dist_plus.py, functional/response.py): feature relations by hand and against
torchdistill's DISTPlusLoss, whose channel term is the correlation itself (it omits the paper's 1 − ρ)."""
import numpy as np
import pytest
import torch
from torch import nn

from kd_lightning.losses import DistillInputs, DISTPlus
from kd_lightning.losses.functional import dist_plus_feature_terms, dist_plus_loss, dist_terms

from .helpers import assert_close_to, logits


def pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8))


def test_feature_terms_by_hand():
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    s, t = fs.double().numpy(), ft.double().numpy()
    channel = 1 - np.mean([pearson(s[i, :, x], t[i, :, x]) for i in range(3) for x in range(5)])
    agg_s, agg_t = s.sum(1), t.sum(1)
    spatial = 1 - np.mean([pearson(agg_s[:, x], agg_t[:, x]) for x in range(5)])
    c, sp = dist_plus_feature_terms(fs, ft)
    assert_close_to(c, channel)
    assert_close_to(sp, spatial)
    # identical features: both relations are perfect
    c, sp = dist_plus_feature_terms(fs, fs * 3.0 + 1.0)
    assert float(c) == pytest.approx(0.0, abs=1e-6) and float(sp) == pytest.approx(0.0, abs=1e-6)


def test_against_torchdistill_with_its_channel_term_flipped():
    from torchdistill.losses import mid_level as mid
    g = torch.Generator().manual_seed(1)
    zs, zt = logits(8, 10, seed=1, scale=3.0), logits(8, 10, seed=2, scale=3.0)
    fs, ft = torch.randn(8, 6, 4, 4, generator=g), torch.randn(8, 6, 4, 4, generator=g)
    ref = mid.DISTPlusLoss(".", "output", ".", "output", "f", "output", "f", "output", beta=1.0, gamma=2.0,
                           iota=0.5, kappa=3.0, tau=4.0)
    io = lambda z, f: {".": {"output": z}, "f": {"output": f}}
    c, sp = dist_plus_feature_terms(fs, ft)
    assert_close_to(c, 1.0 - ref.channel_relation(fs, ft))
    assert_close_to(sp, ref.spatial_relation(fs, ft))
    inter, intra = dist_terms(zs, zt, 4.0)
    ours = dist_plus_loss(zs, zt, fs, ft, beta=1.0, gamma=2.0, iota=0.5, kappa=3.0, temperature=4.0)
    assert_close_to(ours, inter + 2 * intra + 0.5 * c + 3 * sp)
    # the same total once torchdistill's channel correlation (1 - c) is replaced by the paper's 1 - correlation
    assert_close_to(ours, ref(io(zs, fs), io(zt, ft)) - 0.5 * (1.0 - c) + 0.5 * c)


def test_module_projects_narrow_students_and_sums_stages():
    s = {"a": torch.randn(6, 3, 8), "b": torch.randn(6, 5, 4)}
    t = {"a": torch.randn(6, 7, 8), "b": torch.randn(6, 5, 2)}
    inputs = DistillInputs(student_logits=logits(6, 5).requires_grad_(), teacher_logits=logits(6, 5, seed=9),
                           target=torch.tensor([0, 1, 2, 3, 4, 0]), student_features=s, teacher_features=t)
    loss = DISTPlus(pairs=[("a", "a"), ("b", "b")])
    assert loss.needs_build
    loss.build(inputs)
    assert isinstance(loss.adapters[0], nn.Conv1d) and loss.adapters[0].out_channels == 7
    assert isinstance(loss.adapters[1], nn.Identity)  # equal widths: nothing added
    out = loss(inputs)
    assert set(out) == {"loss", "ce", "dist_plus", "inter", "intra", "channel", "spatial"}
    assert_close_to(out["dist_plus"], out["inter"] + out["intra"] + out["channel"] + out["spatial"])
    assert_close_to(out["loss"], out["ce"] + 2.0 * out["dist_plus"])
    out["loss"].backward()
    assert loss.adapters[0].weight.grad is not None
    with pytest.raises(ValueError, match="equal shape"):
        dist_plus_feature_terms(torch.randn(2, 3, 4), torch.randn(2, 4, 4))
