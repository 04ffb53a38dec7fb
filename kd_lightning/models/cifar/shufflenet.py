"""ShuffleNet V1 (Zhang et al., CVPR 2018) and V2 (Ma et al., ECCV 2018) for 32x32 inputs, in the
forms used by the CRD / RepDistiller tables.

Both start with a 1x1 conv to 24 channels at full resolution (no max pooling), then three stages
``layer1..layer3`` at 16, 8 and 4 pixels, global average pooling and ``linear``. Stage outputs are
post-ReLU maps; ``linear:in`` is the embedding. Names match the RepDistiller checkpoints.

* ShuffleV1: groups g=3, stage widths 240/480/960 with 4/8/4 bottlenecks (about 0.95M parameters).
* ShuffleV2: the 1x net, stage widths 116/232/464 with a down-sampling unit plus 3/7/3 basic units,
  then a 1x1 conv to 1024 channels (``conv2``) (about 1.36M parameters).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups: [N, g*c, H, W] -> view [N, g, c] -> transpose."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# --------------------------------------------------------------------------------- ShuffleNet V1
class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1. Stride 2 concatenates an avg-pooled
    shortcut (so the unit produces ``out_planes`` new channels), stride 1 adds the identity."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        # The first unit reads the 24-channel stem, too narrow to split into groups.
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(g)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(out)


class ShuffleNetV1(nn.Module):
    def __init__(self, out_planes: Sequence[int] = (240, 480, 960), num_blocks: Sequence[int] = (4, 8, 4),
                 groups: int = 3, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._stage(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._stage(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._stage(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _stage(self, out_planes: int, blocks: int, groups: int) -> nn.Sequential:
        # The first unit concatenates its input, so it only has to produce the difference.
        units = [ShuffleV1Unit(self.in_planes, out_planes - self.in_planes, stride=2, groups=groups)]
        units += [ShuffleV1Unit(out_planes, out_planes, stride=1, groups=groups) for _ in range(blocks - 1)]
        self.in_planes = out_planes
        return nn.Sequential(*units)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------------- ShuffleNet V2
class SplitHalf(nn.Module):
    """Split the channels into the first ``ratio`` part and the rest."""

    def __init__(self, ratio: float = 0.5):
        super().__init__()
        self.ratio = ratio

    def forward(self, x: Tensor):
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class ShuffleV2Unit(nn.Module):
    """Basic unit: half the channels pass through, the other half goes 1x1 -> dw 3x3 -> 1x1; concat, shuffle."""

    def __init__(self, channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = SplitHalf(split_ratio)
        c = int(channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        keep, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([keep, out], 1))


class ShuffleV2DownUnit(nn.Module):
    """Down-sampling unit: both branches see the whole input at stride 2, each gives half the output."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch: dw 3x3 (stride 2) -> 1x1
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1 -> dw 3x3 (stride 2) -> 1x1
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, out_channels: Sequence[int] = (116, 232, 464, 1024), num_blocks: Sequence[int] = (3, 7, 3),
                 num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._stage(out_channels[0], num_blocks[0])
        self.layer2 = self._stage(out_channels[1], num_blocks[1])
        self.layer3 = self._stage(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _stage(self, out_channels: int, blocks: int) -> nn.Sequential:
        units = [ShuffleV2DownUnit(self.in_channels, out_channels)]
        units += [ShuffleV2Unit(out_channels) for _ in range(blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*units)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def ShuffleV1(num_classes: int = 100) -> ShuffleNetV1:
    """ShuffleNet V1 with g=3 as in the CIFAR distillation tables (about 0.95M parameters)."""
    return ShuffleNetV1(num_classes=num_classes)


def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNet V2 1x as in the CIFAR distillation tables (about 1.36M parameters)."""
    return ShuffleNetV2(num_classes=num_classes)
