"""The registered architectures: each described once, with the module paths its features are read from."""
from __future__ import annotations

from . import cifar
from .hub import timm_model, torchvision_model
from .lm import LM_PRESETS, build_causal_lm, load_causal_lm
from .mnist1d import CNN1D, ResidualMLP
from .registry import register_model

_CNN1D_TAPS = {"stages": ["blocks.0", "blocks.1", "blocks.2"], "hint": "blocks.1", "embedding": "fc:in"}
for _channels in (8, 16, 25, 64, 128):
    register_model(f"cnn1d_{_channels}", CNN1D, f"1-D CNN for MNIST-1D with {_channels} channels", _CNN1D_TAPS,
                   channels=_channels)

_MLP_TAPS = {"stages": ["l1", "l2"], "hint": "l2", "embedding": "l3:in"}
register_model("mlp", ResidualMLP, "the MNIST-1D paper's residual MLP 40-100-100-10 (15,210 parameters)",
               _MLP_TAPS, input_size=40, hidden=100)
register_model("mlp_digits", ResidualMLP, "residual MLP for sklearn digits (64 inputs, 32 hidden)", _MLP_TAPS,
               input_size=64, hidden=32)
register_model("mlp_digits_large", ResidualMLP, "residual MLP for sklearn digits (64 inputs, 512 hidden)",
               _MLP_TAPS, input_size=64, hidden=512)

# CIFAR zoo (RepDistiller / mdistiller names and parameter counts).
_RESNET_TAPS = {"stages": ["layer1", "layer2", "layer3"], "hint": "layer2", "embedding": "fc:in"}  # 32/16/8 px
for _name in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
              "resnet32x4"):
    register_model(_name, getattr(cifar, _name), f"CIFAR {_name}", _RESNET_TAPS)
_WRN_TAPS = {"stages": ["block1", "block2", "block3"], "hint": "block2", "embedding": "fc:in"}  # group sums
for _name in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"):
    register_model(_name, getattr(cifar, _name), f"CIFAR wide ResNet {_name}", _WRN_TAPS)
_VGG_TAPS = {"stages": ["block1", "block2", "block3", "block4"], "hint": "block2", "embedding": "classifier:in"}
for _name in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19"):
    register_model(_name, getattr(cifar, _name), f"CIFAR {_name} (batch norm)", _VGG_TAPS)
register_model("MobileNetV2", cifar.MobileNetV2, "CIFAR MobileNetV2 (width 0.5)",
               {"stages": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"], "hint": "blocks.2",
                "embedding": "classifier:in"})
register_model("ShuffleV1", cifar.ShuffleV1, "CIFAR ShuffleNetV1",
               {"stages": ["layer1", "layer2", "layer3"], "hint": "layer2", "embedding": "linear:in"})
register_model("ShuffleV2", cifar.ShuffleV2, "CIFAR ShuffleNetV2",
               {"stages": ["layer1", "layer2", "layer3"], "hint": "layer2", "embedding": "linear:in"})

# Any torchvision or timm classifier by name; the taps fit the ResNet family (set <role>.taps.* for others).
_HUB_TAPS = {"stages": ["layer1", "layer2", "layer3", "layer4"], "hint": "layer2", "embedding": "fc:in"}
register_model("torchvision", torchvision_model, "any torchvision classifier: <role>.name=resnet34 "
               "<role>.weights=DEFAULT (weights from $TORCH_HOME, never downloaded by tests)", _HUB_TAPS,
               top_level=("name", "weights"), name="resnet18", weights=None)
register_model("timm", timm_model, "any timm classifier: <role>.name=... <role>.pretrained=true", _HUB_TAPS,
               top_level=("name", "pretrained"), name="resnet18", pretrained=False)

# Causal language models (kd_lightning.lm): Llama-style presets built from a config (the vocabulary size
# comes from the data's tokenizer), and any local Hugging Face directory.
for _name, _sizes in LM_PRESETS.items():
    register_model(_name, build_causal_lm, f"Llama-style causal LM ({', '.join(f'{k} {v}' for k, v in _sizes.items())})",
                   {}, data_args=("vocab_size",), task="causal_lm", arch="llama", **_sizes)
register_model("hf_local", load_causal_lm, "any Hugging Face causal LM in a local directory: <role>.name_or_path=DIR "
               "(nothing is downloaded)", {}, top_level=("name_or_path",), data_args=(), task="causal_lm",
               name_or_path=None)
