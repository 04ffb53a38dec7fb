"""VGG with batch normalization for 32x32 inputs (Simonyan & Zisserman 2015), as used in the
CRD / RepDistiller tables: the fully connected layers are replaced by global average pooling and a
single 512 -> classes linear layer, and "vgg8" is the small configuration with one conv per group.

Five conv groups ``block0..block4``; groups 0-2 are followed by 2x2 max pooling, so on CIFAR
``block3`` and ``block4`` both run at 4x4 (larger inputs are pooled once more after ``block3``).
Each group ends with its ReLU, so ``blockN`` taps give the activated maps; the last BatchNorm of a
group (e.g. ``block2.4`` in vgg13) is the pre-activation. Parameter positions inside the groups match
the RepDistiller checkpoints (``block0.0.weight`` ...), whose published teachers therefore load.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .init import init_weights

# Output channels of the convolutions in each of the five groups.
_CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _group(in_channels: int, channels: Sequence[int]) -> nn.Sequential:
    layers = []
    for c in channels:
        layers += [nn.Conv2d(in_channels, c, kernel_size=3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        in_channels = c
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """VGG-BN over five conv groups (``groups[i]`` lists the widths of group ``i``)."""

    def __init__(self, groups: Sequence[Sequence[int]], num_classes: int = 100):
        super().__init__()
        if len(groups) != 5:
            raise ValueError(f"VGG needs 5 conv groups, got {len(groups)}")
        in_channels = [3] + [g[-1] for g in groups[:-1]]
        self.block0 = _group(in_channels[0], groups[0])
        self.block1 = _group(in_channels[1], groups[1])
        self.block2 = _group(in_channels[2], groups[2])
        self.block3 = _group(in_channels[3], groups[3])
        self.block4 = _group(in_channels[4], groups[4])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(groups[4][-1], num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block3(x)
        if x.shape[-1] > 4:  # 64x64 and larger inputs: one more halving before the last group
            x = self.pool3(x)
        x = self.block4(x)
        return self.classifier(torch.flatten(self.pool4(x), 1))


def vgg8(num_classes: int = 100) -> CifarVGG:
    """3.96M parameters with 100 classes."""
    return CifarVGG(_CONFIGS["vgg8"], num_classes)


def vgg11(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(_CONFIGS["vgg11"], num_classes)


def vgg13(num_classes: int = 100) -> CifarVGG:
    """9.46M parameters with 100 classes."""
    return CifarVGG(_CONFIGS["vgg13"], num_classes)


def vgg16(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(_CONFIGS["vgg16"], num_classes)


def vgg19(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(_CONFIGS["vgg19"], num_classes)
