"""MobileNetV2 (Sandler et al., CVPR 2018) for 32x32 inputs, in the form used by the CRD /
RepDistiller tables ("mobile_half": expansion 6, width multiplier 0.5, about 0.81M parameters).

Differences from the ImageNet network, kept so the published numbers are comparable: the stem is
a stride-2 3x3 conv, every inverted residual (the first, expansion-1 one included) has its 1x1
expansion conv, and the last 1x1 conv keeps 1280 channels whatever the width multiplier below 1.

Modules: ``conv1`` (stem), ``blocks.0..6`` (the seven bottleneck groups, at 16, 16, 8, 4, 4, 2, 2
pixels), ``conv2`` (1x1 to 1280), ``classifier`` (a Sequential holding the linear layer, so
``classifier:in`` is the pooled embedding). The usual feature points are the ends of
``blocks.1``, ``blocks.2``, ``blocks.4`` and ``blocks.6``. Names match the RepDistiller checkpoints.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .init import init_weights

# (expansion, output channels at width 1, repeats, stride of the first repeat)
_SETTINGS = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; a residual sum when shapes allow it."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 with expansion ``expansion`` and width multiplier ``width_mult``."""

    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100):
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, stride=2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTINGS:
            out_channels = int(c * width_mult)
            group = []
            for i in range(n):
                group.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t or expansion))
                channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        self.last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.last_channels, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channels, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def MobileNetV2(num_classes: int = 100) -> CifarMobileNetV2:
    """The CIFAR student "MobileNetV2" of the distillation tables (RepDistiller's ``mobile_half``)."""
    return CifarMobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes)
