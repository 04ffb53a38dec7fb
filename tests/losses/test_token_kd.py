"""TokenKD: next-token alignment, position masks, the num_tokens divisor and argument errors."""
import pytest
import torch
import torch.nn.functional as F

from kd_lightning.losses import TokenKD
from kd_lightning.losses.functional import token_divergence


def _batch():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    t = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = ids.clone()
    labels[attn == 0] = -100
    labels[0, 1] = -100  # a prompt token: no CE, but still a KD position under kd_positions="all"
    return s, t, labels, attn


def test_ce_is_shifted_cross_entropy_ignoring_minus_100():
    s, t, labels, attn = _batch()
    out = TokenKD(ce_weight=1.0, kd_weight=0.0)(s, None, labels, attn)
    ref = F.cross_entropy(s[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert out["ce"].item() == pytest.approx(ref.item(), rel=1e-12)
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-12)
    assert out["kd"].item() == 0.0


def test_kd_positions_all_versus_labels():
    s, t, labels, attn = _batch()
    # "all": the 4 + 2 non-padding next-token positions; "labels": minus the masked prompt position
    all_mask = attn[:, 1:].bool()
    lab_mask = labels[:, 1:] != -100
    assert all_mask.sum() == 6 and lab_mask.sum() == 5
    out_all = TokenKD(divergence="reverse", temperature=2.0)(s, t, labels, attn)
    out_lab = TokenKD(divergence="reverse", temperature=2.0, kd_positions="labels")(s, t, labels, attn)
    assert out_all["kd"].item() == pytest.approx(
        token_divergence(s[:, :-1], t[:, :-1], all_mask, divergence="reverse", temperature=2.0).item(), rel=1e-12)
    assert out_lab["kd"].item() == pytest.approx(
        token_divergence(s[:, :-1], t[:, :-1], lab_mask, divergence="reverse", temperature=2.0).item(), rel=1e-12)
    assert out_all["kd"].item() != pytest.approx(out_lab["kd"].item())


def test_weighted_total_and_num_tokens_divisor():
    s, t, labels, attn = _batch()
    loss = TokenKD(ce_weight=0.3, kd_weight=0.7)
    local = loss(s, t, labels, attn)
    assert local["loss"].item() == pytest.approx(0.3 * local["ce"].item() + 0.7 * local["kd"].item(), rel=1e-12)
    step = loss(s, t, labels, attn, num_tokens=60)
    # each term becomes (its sum over this batch) / 60
    assert step["kd"].item() == pytest.approx(local["kd"].item() * 6 / 60, rel=1e-12)
    assert step["ce"].item() == pytest.approx(local["ce"].item() * 5 / 60, rel=1e-12)
    assert int(loss.count_mask(labels, attn).sum()) == 6
    assert int(TokenKD(ce_weight=1.0, kd_weight=0.0).count_mask(labels, attn).sum()) == 5


def test_errors_are_one_clear_line():
    with pytest.raises(ValueError, match="divergence='kl' is not known"):
        TokenKD(divergence="kl")
    with pytest.raises(ValueError, match="kd_positions='some'"):
        TokenKD(kd_positions="some")
    with pytest.raises(ValueError, match="beta=2 is outside"):
        TokenKD(beta=2)
    with pytest.raises(ValueError, match="all loss weights are zero"):
        TokenKD(ce_weight=0.0, kd_weight=0.0)
    s, t, labels, attn = _batch()
    with pytest.raises(ValueError, match="needs teacher logits"):
        TokenKD()(s, None, labels, attn)
