"""FeatureTaps: forward hooks by module path on unmodified models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_lightning import FeatureTaps
from kd_lightning.taps import resolve, split_path

torchvision = pytest.importorskip("torchvision")


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 6, 3, stride=2, padding=1))
        self.head = nn.Linear(6 * 5, 3)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def test_resnet18_layer3_and_fc_input():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(model, ["layer3", "fc:in"]) as taps:
        logits = model(x)
        feats = taps.pop()
        assert set(feats) == {"layer3", "fc:in"}
        assert feats["layer3"].shape == (2, 256, 2, 2)
        assert feats["fc:in"].shape == (2, 512)
        assert taps.features == {}  # pop forgets: no stale tensors for the next step
        # the head's input really is what fc received
        torch.testing.assert_close(model.fc(feats["fc:in"]), logits)
    assert _hook_count(model) == 0


def test_small_custom_model_nested_paths():
    model = Small()
    x = torch.randn(3, 2, 10)
    taps = FeatureTaps(model, ["body.0", "body.2", "head:in", "body.0"])  # duplicates collapse
    assert taps.paths == ["body.0", "body.2", "head:in"] and len(taps) == 3
    model(x)
    feats = taps.pop()
    assert feats["body.0"].shape == (3, 4, 10)
    assert feats["body.2"].shape == (3, 6, 5)
    assert feats["head:in"].shape == (3, 30)
    torch.testing.assert_close(feats["head:in"], feats["body.2"].flatten(1))
    taps.remove()
    assert _hook_count(model) == 0
    model(x)
    assert taps.features == {}


def test_unknown_path_lists_close_names():
    model = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(ValueError) as err:
        FeatureTaps(model, ["layer33"])
    msg = str(err.value)
    assert "layer33" in msg and "layer3" in msg and "ResNet" in msg
    with pytest.raises(ValueError, match="closest: body"):
        resolve(Small(), "bodyy.0")
    model = Small()
    with pytest.raises(ValueError, match="nope"):
        FeatureTaps(model, ["body.0", "nope.nothing.here"])


def test_pop_reports_layers_that_did_not_run():
    class Skips(Small):
        def forward(self, x):
            return self.head(torch.zeros(x.shape[0], 30))

    model = Skips()
    with FeatureTaps(model, ["body.2"]) as taps:
        model(torch.randn(2, 2, 10))
        with pytest.raises(RuntimeError, match="did not run"):
            taps.pop()


def test_split_path():
    assert split_path("fc:in") == ("fc", True)
    assert split_path("layer3") == ("layer3", False)


def test_taps_capture_gradients_for_the_student():
    model = Small()
    with FeatureTaps(model, ["body.2"]) as taps:
        model(torch.randn(2, 2, 10))
        feat = taps.pop()["body.2"]
    feat.pow(2).sum().backward()
    assert model.body[0].weight.grad is not None


def test_an_item_of_a_tuple_output_is_tapped_by_index():
    class Pair(nn.Module):
        def forward(self, x):
            return x + 1, x * 10, None

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Pair()

        def forward(self, x):
            return self.block(x)[0]

    net, x = Net(), torch.ones(2, 3)
    assert split_path("block:1") == ("block", False)
    with FeatureTaps(net, ["block", "block:1"]) as taps:
        net(x)
        feats = taps.pop()
    assert torch.equal(feats["block"], x + 1) and torch.equal(feats["block:1"], x * 10)
    with FeatureTaps(net, ["block:2"]) as taps, pytest.raises(RuntimeError, match="no item 2.*eager attention"):
        net(x)
