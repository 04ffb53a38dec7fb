"""kd_lightning/models/registry.py: register_model adds the ``last`` tap (FT, ICKD) beside every model with stage
taps."""
import torch

from kd_lightning.models import create_model, list_models, model_entry
from kd_lightning.taps import FeatureTaps


def test_every_model_with_stages_names_its_deepest_stage_last():
    staged = [n for n in list_models() if model_entry(n).taps.get("stages")]
    assert {"cnn1d_16", "resnet8x4", "vgg8", "torchvision", "timm", "mlp"} <= set(staged)
    for name in staged:
        taps = model_entry(name).taps
        assert taps["last"] == taps["stages"][-1], name
    assert "last" not in model_entry("hf_local").taps  # language models have no stage taps


def test_the_last_tap_of_a_1d_cnn_is_its_deepest_map():
    net = create_model("cnn1d_16", num_classes=10)
    with FeatureTaps(net, [model_entry("cnn1d_16").taps["last"]]) as taps, torch.no_grad():
        net(torch.randn(2, 40))
        (feature,) = taps.pop().values()
    assert feature.shape == (2, 16, 5)  # [batch, channels, length]: 40 -> 19 -> 10 -> 5


def test_register_model_adds_last_unless_given():
    from kd_lightning.models.registry import REGISTRY, register_model

    try:
        a = register_model("_test_a", torch.nn.Linear, "test", {"stages": ["x", "y"]})
        b = register_model("_test_b", torch.nn.Linear, "test", {"stages": ["x", "y"], "last": "x"})
        assert a.taps["last"] == "y" and b.taps["last"] == "x"
    finally:
        REGISTRY.pop("_test_a", None), REGISTRY.pop("_test_b", None)
