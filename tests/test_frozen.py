"""kd_lightning/frozen.py: frozen parameters leave the checkpoint and come back from the live network."""
import pytest
import torch
from torch import nn

from kd_lightning.frozen import FROZEN_RECORD, drop_frozen, frozen_keys, restore_frozen


def _net(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    for p in net[0].parameters():
        p.requires_grad_(False)
    return net


def test_frozen_weights_dropped_then_restored_from_the_same_base():
    net = _net(0)
    assert frozen_keys(net) == ["0.weight", "0.bias"]
    checkpoint = {"state_dict": {f"student.{k}": v.clone() for k, v in net.state_dict().items()}}
    drop_frozen(checkpoint, net, "student.")
    # trained weights and buffers (BatchNorm statistics) stay; the frozen layer goes
    kept = sorted(f"student.{k}" for k in net.state_dict() if not k.startswith("0."))
    assert sorted(checkpoint["state_dict"]) == kept
    assert checkpoint[FROZEN_RECORD]["count"] == 2
    same_base = _net(0)
    with torch.no_grad():
        same_base[2].weight.zero_()  # the trained part may differ: it comes from the checkpoint
    restore_frozen(checkpoint, same_base, "student.")
    loaded = nn.Sequential(*_net(5))
    loaded.load_state_dict({k[len("student."):]: v for k, v in checkpoint["state_dict"].items()}, strict=True)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_other_base_is_refused_and_an_unfrozen_net_is_untouched():
    net = _net(0)
    checkpoint = {"state_dict": {f"student.{k}": v for k, v in net.state_dict().items()}}
    drop_frozen(checkpoint, net, "student.")
    with pytest.raises(ValueError, match="build the same base model"):
        restore_frozen(checkpoint, _net(1), "student.")
    plain = nn.Linear(2, 2)
    untouched = {"state_dict": {"student.weight": plain.weight, "student.bias": plain.bias}}
    drop_frozen(untouched, plain, "student.")
    assert set(untouched) == {"state_dict"} and len(untouched["state_dict"]) == 2
