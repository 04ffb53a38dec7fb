"""The CIFAR model zoo of the distillation benchmarks (CRD / RepDistiller, DKD / mdistiller tables).

Every builder takes ``num_classes`` (default 100) and returns a plain ``nn.Module`` whose
``forward(x)`` returns logits; intermediate features are read with :class:`kd_lightning.taps.FeatureTaps`
on the stage modules (see each family's module docstring and ``conf/model/<name>.yaml``).
Module names match the RepDistiller checkpoints, so the published CIFAR teachers load with
``net.load_state_dict(torch.load(path)["model"])``.

>>> net = CIFAR_MODELS["resnet8x4"](num_classes=100)
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict

from torch import nn

from .mobilenetv2 import CifarMobileNetV2, MobileNetV2
from .resnet import (CifarResNet, resnet8, resnet8x4, resnet14, resnet20, resnet32, resnet32x4, resnet44,
                     resnet56, resnet110)
from .shufflenet import ShuffleNetV1, ShuffleNetV2, ShuffleV1, ShuffleV2
from .vgg import CifarVGG, vgg8, vgg11, vgg13, vgg16, vgg19
from .wrn import WideResNet, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

CIFAR_MODELS: Dict[str, Callable[..., nn.Module]] = {
    "resnet8": resnet8,
    "resnet14": resnet14,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "wrn_16_1": wrn_16_1,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "MobileNetV2": MobileNetV2,
    "ShuffleV1": ShuffleV1,
    "ShuffleV2": ShuffleV2,
}


def cifar_model(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    """Build a zoo model by name; an unknown name raises a ValueError listing the closest ones."""
    if name not in CIFAR_MODELS:
        close = difflib.get_close_matches(name, list(CIFAR_MODELS), n=5, cutoff=0.3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose from {', '.join(CIFAR_MODELS)}"
        raise ValueError(f"unknown CIFAR model {name!r}; {hint}")
    return CIFAR_MODELS[name](num_classes=num_classes, **kwargs)


__all__ = ["CIFAR_MODELS", "cifar_model", "CifarResNet", "WideResNet", "CifarVGG", "CifarMobileNetV2",
           "ShuffleNetV1", "ShuffleNetV2", *CIFAR_MODELS]
