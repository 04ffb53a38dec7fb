"""SKD (kd_lightning/losses/skd.py, functional/response.py): the paper's two terms by hand and against torchdistill."""
import numpy as np
import pytest
import torch

from kd_lightning.losses import SKD
from kd_lightning.losses.functional import kd_loss, skd_direction_loss, skd_instance_loss

from .helpers import assert_close_to, logits, make_inputs


def direction_by_hand(zs, zt, lam, scale=1.0):
    zs, zt = zs.double().numpy(), zt.double().numpy()
    ns = zs / np.linalg.norm(zs, axis=1, keepdims=True)
    nt = zt / np.linalg.norm(zt, axis=1, keepdims=True)
    d = (ns @ ns.T - nt @ nt.T) / scale
    centred = d - d.mean(axis=0, keepdims=True)
    cov = centred.T @ centred / (d.shape[0] - 1) + lam * np.eye(d.shape[1])
    inv = np.linalg.inv(cov)
    return float(np.mean([np.sqrt(row @ inv @ row) for row in d]))


def test_direction_term_is_the_mahalanobis_distance_of_the_gram_difference():
    zs, zt = logits(5, 7, seed=1), logits(5, 7, seed=2)
    for lam in (0.1, 1.0):
        assert_close_to(skd_direction_loss(zs, zt, lam), direction_by_hand(zs, zt, lam), tol=1e-5)
    # equal directions (any positive rescaling of each row) give zero
    assert float(skd_direction_loss(zs * torch.rand(5, 1) + zs * 0, zs)) == pytest.approx(0.0, abs=1e-6)


def test_instance_term_is_kl_without_the_temperature_square():
    zs, zt = logits(6, 5, seed=3), logits(6, 5, seed=4)
    assert_close_to(skd_instance_loss(zs, zt, 4.0), kd_loss(zs, zt, 4.0) / 16.0)


@pytest.mark.parametrize("mode", ["paper", "code"])
def test_terms_match_torchdistill_in_both_modes(mode):
    from torchdistill.losses import mid_level as mid
    zs, zt = logits(8, 10, seed=5, scale=3.0), logits(8, 10, seed=6, scale=3.0)
    io = lambda z: {".": {"output": z}}
    ref_dir = mid.SKDDirectionLoss(".", "output", ".", "output", tikhonov=0.1, mode=mode)(io(zs), io(zt))
    ref_ins = mid.SKDInstanceLoss(".", "output", ".", "output", temperature=4.0, mode=mode)(io(zs), io(zt))
    assert_close_to(skd_direction_loss(zs, zt, 0.1, mode), ref_dir)
    assert_close_to(skd_instance_loss(zs, zt, 4.0, mode), ref_ins)


def test_code_mode_by_hand():
    zs, zt = logits(6, 5, seed=7), logits(6, 5, seed=8)
    conf = torch.softmax(zt, 1).amax(1)
    mask = (conf <= torch.quantile(conf, 0.5)).double()  # the less confident half of the batch
    per_sample = torch.stack([kd_loss(zs[i:i + 1], zt[i:i + 1], 4.0) for i in range(6)]).double()
    assert_close_to(skd_instance_loss(zs, zt, 4.0, "code"), (per_sample * mask).mean())
    class_conf = torch.softmax(zt, 1).sum(0)
    share = float((class_conf <= torch.quantile(class_conf, 0.5)).double().mean())
    assert_close_to(skd_direction_loss(zs, zt, 0.1, "code"), share * direction_by_hand(zs, zt, 0.1, scale=5))


def test_module_weighs_its_terms_and_refuses_bad_values():
    inputs = make_inputs()
    out = SKD(ce_weight=1.0, instance_weight=2.0, direction_weight=3.0, mode="paper")(inputs)
    assert set(out) == {"loss", "ce", "skd_instance", "skd_direction"}
    assert_close_to(out["loss"], out["ce"] + 2 * out["skd_instance"] + 3 * out["skd_direction"])
    out["loss"].backward()
    assert torch.isfinite(inputs.student_logits.grad).all()
    with pytest.raises(ValueError, match="tikhonov"):
        SKD(tikhonov=0.0)
    with pytest.raises(ValueError, match="mode"):
        SKD(mode="both")
    with pytest.raises(ValueError, match="at least 2"):
        skd_direction_loss(torch.randn(1, 3), torch.randn(1, 3))
