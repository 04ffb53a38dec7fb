"""CTKD (kd_lightning/losses/ctkd.py, functional/response.py): reversal, curriculum, learned-temperature KD."""
import math

import pytest
import torch

from kd_lightning.losses import CTKD
from kd_lightning.losses.functional import ctkd_kd_loss, ctkd_lambda, gradient_reversal, kd_loss

from .helpers import assert_close_to, logits, make_inputs


def test_gradient_reversal_is_identity_forward_and_negates_backward():
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = gradient_reversal(x, 0.3)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([2.0, 5.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.6, -1.5]))


def test_curriculum_is_a_cosine_rise_then_flat():
    assert ctkd_lambda(0.0, 10) == 0.0
    assert ctkd_lambda(5.0, 10) == pytest.approx(0.5)
    assert ctkd_lambda(2.5, 10) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert ctkd_lambda(10.0, 10) == pytest.approx(1.0) == ctkd_lambda(30.0, 10)
    assert ctkd_lambda(3.0, 0) == 1.0
    assert ctkd_lambda(5.0, 10, start=0.2, end=0.6) == pytest.approx(0.4)


def test_learned_temperature_kd_by_hand():
    zs, zt = logits(4, 5, seed=1), logits(4, 5, seed=2)
    assert_close_to(ctkd_kd_loss(zs, zt, torch.tensor(3.0)), kd_loss(zs, zt, 3.0))
    temps = torch.tensor([1.0, 2.0, 4.0, 8.0])
    by_hand = sum(float(t) ** 2 * float(kd_loss(zs[i:i + 1], zt[i:i + 1], float(t))) / float(t) ** 2
                  for i, t in enumerate(temps)) / 4
    assert_close_to(ctkd_kd_loss(zs, zt, temps), by_hand)
    with pytest.raises(ValueError, match="one value per sample"):
        ctkd_kd_loss(zs, zt, torch.ones(3))


@pytest.mark.parametrize("mode", ["global", "instance"])
def test_temperature_starts_at_init_and_ascends_the_kd_loss(mode):
    loss = CTKD(mode=mode, num_classes=5, ramp_epochs=10, init_temperature=4.0, ce_weight=0.0, kd_weight=1.0)
    first = loss(make_inputs(epoch=0.0))
    assert float(first["temperature"]) == pytest.approx(4.0, rel=1e-5) and float(first["ctkd_lambda"]) == 0.0
    first["loss"].backward()
    params = [p for p in loss.parameters()]
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in params)  # lambda = 0: no push yet
    # past the ramp, the temperature's gradient is the reverse of the KD loss's: a step raises the KD loss
    opt = torch.optim.SGD(loss.parameters(), lr=0.01)
    inputs = make_inputs(epoch=20.0)
    before = float(loss(inputs)["kd"].detach())
    opt.zero_grad()
    loss(inputs)["loss"].backward()
    opt.step()
    assert float(loss(make_inputs(epoch=20.0))["kd"].detach()) > before


def test_ctkd_refuses_bad_settings():
    with pytest.raises(ValueError, match="num_classes"):
        CTKD(mode="instance")
    with pytest.raises(ValueError, match="mode"):
        CTKD(mode="layer")
    with pytest.raises(ValueError, match="init_temperature"):
        CTKD(init_temperature=30.0)
    assert "temperature" not in dict(CTKD().named_parameters())  # one parameter, theta
    assert [n for n, _ in CTKD().named_parameters()] == ["theta"]
