"""The CIFAR zoo: every preset builds and gives logits, parameter counts match the published tables,
and the stage paths named in conf/model/*.yaml can be tapped."""
import functools

import pytest
import torch

from kd_lightning.models.cifar import CIFAR_MODELS, cifar_model
from kd_lightning.taps import FeatureTaps

# Published sizes with 100 classes (CRD / RepDistiller and DKD / mdistiller papers), in millions.
PUBLISHED_PARAMS = {
    "resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_40_2": 2.26, "ShuffleV2": 1.36, "resnet56": 0.86,
    "resnet20": 0.28, "vgg13": 9.46, "vgg8": 3.96, "wrn_16_2": 0.70, "MobileNetV2": 0.81, "ShuffleV1": 0.95,
}

# One preset per family: stage taps (expected [channels, size]) and the embedding tap (expected width).
FAMILY_TAPS = {
    "resnet8x4": ({"layer1": (64, 32), "layer2": (128, 16), "layer3": (256, 8)}, "fc:in", 256),
    "resnet20": ({"layer1": (16, 32), "layer2": (32, 16), "layer3": (64, 8)}, "fc:in", 64),
    "wrn_16_2": ({"block1": (32, 32), "block2": (64, 16), "block3": (128, 8)}, "fc:in", 128),
    "vgg8": ({"block1": (128, 16), "block2": (256, 8), "block3": (512, 4), "block4": (512, 4)}, "classifier:in", 512),
    "MobileNetV2": ({"blocks.1": (12, 16), "blocks.2": (16, 8), "blocks.4": (48, 4), "blocks.6": (160, 2)},
                    "classifier:in", 1280),
    "ShuffleV1": ({"layer1": (240, 16), "layer2": (480, 8), "layer3": (960, 4)}, "linear:in", 960),
    "ShuffleV2": ({"layer1": (116, 16), "layer2": (232, 8), "layer3": (464, 4)}, "linear:in", 1024),
}

EXPECTED_NAMES = {
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "ShuffleV1", "ShuffleV2",
}


def n_params(net):
    return sum(p.numel() for p in net.parameters())



@functools.lru_cache(maxsize=None)
def built(name):
    """One eval-mode instance per preset, shared by the read-only tests below (keeps the file fast)."""
    torch.manual_seed(0)
    return CIFAR_MODELS[name](num_classes=100).eval()


def test_registry_has_exactly_the_zoo():
    assert set(CIFAR_MODELS) == EXPECTED_NAMES
    import kd_lightning.models.cifar as zoo

    for name in EXPECTED_NAMES:  # builders are importable by name (Hydra _target_ paths)
        assert getattr(zoo, name) is CIFAR_MODELS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_preset_builds_and_returns_logits(name):
    with torch.no_grad():
        out = built(name)(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 100)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_published(name):
    count = n_params(built(name)) / 1e6
    assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01), f"{name}: {count:.4f}M"


def test_num_classes_sets_the_head():
    net = cifar_model("resnet8", num_classes=10).eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(FAMILY_TAPS))
def test_stage_and_embedding_taps(name):
    stages, embedding, width = FAMILY_TAPS[name]
    net = built(name)
    with FeatureTaps(net, [*stages, embedding]) as taps, torch.no_grad():
        logits = net(torch.randn(2, 3, 32, 32))
        feats = taps.pop()
    assert logits.shape == (2, 100)
    for path, (channels, size) in stages.items():
        assert feats[path].shape == (2, channels, size, size), path
    assert feats[embedding].shape == (2, width)


def test_stage_outputs_are_not_overwritten_in_place():
    # Post-ReLU stage taps must hold non-negative values, and pre-activation taps must survive the
    # following ReLU (no in-place activations anywhere in the zoo).
    net = built("vgg8")
    with FeatureTaps(net, ["block2", "block2.1"]) as taps, torch.no_grad():
        net(torch.randn(4, 3, 32, 32))
        feats = taps.pop()
    assert feats["block2"].min() >= 0
    assert feats["block2.1"].min() < 0
    for name in FAMILY_TAPS:
        assert not any(getattr(m, "inplace", False) for m in built(name).modules()), name


def test_vgg_pools_larger_inputs_once_more():
    net = built("vgg8")
    with FeatureTaps(net, ["block4"]) as taps, torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 100)
        assert taps.pop()["block4"].shape[-1] == 4


def test_state_dict_names_follow_the_published_checkpoints():
    # The RepDistiller / mdistiller teacher checkpoints use these parameter names.
    keys = {
        "resnet32x4": ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
                       "layer3.4.bn2.bias", "fc.weight"],
        "wrn_40_2": ["conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.5.bn2.weight", "bn1.weight",
                     "fc.bias"],
        "vgg13": ["block0.0.weight", "block0.0.bias", "block0.1.weight", "block0.3.weight", "block4.4.running_var",
                  "classifier.weight"],
        "MobileNetV2": ["conv1.0.weight", "blocks.0.0.conv.0.weight", "blocks.6.0.conv.7.bias", "conv2.0.weight",
                        "classifier.0.weight"],
        "ShuffleV1": ["conv1.weight", "layer1.0.conv3.weight", "layer3.3.bn3.weight", "linear.weight"],
        "ShuffleV2": ["conv1.weight", "layer1.0.conv5.weight", "layer3.3.bn3.weight", "conv2.weight", "bn2.weight",
                      "linear.weight"],
    }
    for name, expected in keys.items():
        state = built(name).state_dict()
        missing = [k for k in expected if k not in state]
        assert not missing, f"{name}: {missing}"


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match="resnet8x4"):
        cifar_model("resnet8x5")


def test_bad_depth_is_rejected():
    from kd_lightning.models.cifar import CifarResNet, WideResNet

    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(depth=9)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=15)


def test_training_step_backpropagates():
    net = CIFAR_MODELS["resnet8"]()  # a fresh one: this test trains
    loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
