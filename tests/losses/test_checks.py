"""kd_lightning/losses/checks.py: the objectives refuse bad temperatures, negative or all-zero weights and unknown
options at construction."""
from __future__ import annotations


import pytest

from kd_lightning.losses import DIST, DKD, KD, LogitMSE



@pytest.mark.parametrize("factory", [
    lambda: KD(temperature=0.0), lambda: KD(temperature=-2.0), lambda: DKD(temperature=0),
    lambda: DIST(temperature=-1.0),
])
def test_construction_rejects_bad_temperature(factory):
    with pytest.raises(ValueError, match="temperature"):
        factory()


@pytest.mark.parametrize("factory", [
    lambda: KD(ce_weight=-0.1), lambda: KD(kd_weight=-1.0), lambda: DKD(beta=-8.0), lambda: DKD(alpha=-1.0),
    lambda: DKD(ce_weight=-1.0), lambda: DIST(gamma=-1.0), lambda: DIST(kd_weight=-2.0),
    lambda: LogitMSE(ce_weight=-1.0), lambda: DKD(warmup_epochs=-5),
])
def test_construction_rejects_negative_weights(factory):
    with pytest.raises(ValueError, match=">= 0"):
        factory()


@pytest.mark.parametrize("factory", [
    lambda: KD(ce_weight=0.0, kd_weight=0.0), lambda: DKD(ce_weight=0.0, alpha=0.0, beta=0.0),
    lambda: DIST(ce_weight=0.0, kd_weight=0.0), lambda: DIST(ce_weight=0.0, beta=0.0, gamma=0.0),
    lambda: LogitMSE(ce_weight=0.0, kd_weight=0.0),
])
def test_construction_rejects_all_zero_weights(factory):
    with pytest.raises(ValueError, match="set ce_weight > 0|set at least one > 0"):
        factory()


def test_construction_rejects_bad_options():
    with pytest.raises(ValueError, match="divergence"):
        KD(divergence="kl")
    with pytest.raises(ValueError, match="label_smoothing"):
        KD(label_smoothing=1.0)
