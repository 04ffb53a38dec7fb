"""Wide residual networks (Zagoruyko & Komodakis, BMVC 2016) for 32x32 inputs.

WRN-d-k: a 3x3 stem with 16 channels, then three groups of pre-activation basic blocks with
16k, 32k and 64k channels at 32, 16 and 8 pixels (``depth = 6n + 4``), a final BN-ReLU, global
average pooling and a linear classifier.

Module names follow the RepDistiller checkpoints (``block1.layer.0.bn1``, ``convShortcut``, the
final ``bn1``, ``fc``) so their published teacher weights load. The group outputs ``block1..3``
are the raw residual sums (pre-activation networks have no ReLU there); ``fc:in`` is the embedding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .init import init_weights


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3; the shortcut is the identity or a 1x1 conv of the activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        # camelCase kept for checkpoint compatibility with the RepDistiller teachers.
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        # With a projection the shortcut starts from the activated input, otherwise from x itself.
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class WideGroup(nn.Module):
    """``n`` wide blocks; the first one changes width and stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(n)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs."""

    def __init__(self, depth: int, widen_factor: int = 1, num_classes: int = 100, drop_rate: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"a wide ResNet needs depth = 6n + 4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = WideGroup(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = WideGroup(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = WideGroup(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self, zero_linear_bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def wrn_16_1(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(16, 1, num_classes, drop_rate)


def wrn_16_2(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
    """0.70M parameters with 100 classes."""
    return WideResNet(16, 2, num_classes, drop_rate)


def wrn_40_1(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
    return WideResNet(40, 1, num_classes, drop_rate)


def wrn_40_2(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
    """2.26M parameters with 100 classes."""
    return WideResNet(40, 2, num_classes, drop_rate)
