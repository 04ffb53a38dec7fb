"""The weight initialisation shared by the CIFAR zoo (He-normal convolutions, unit BatchNorm)."""
from __future__ import annotations

from typing import Optional

from torch import nn


def init_weights(net: nn.Module, linear_std: Optional[float] = None, zero_linear_bias: bool = False) -> None:
    """Convs: Kaiming normal (fan_out) and zero bias; BatchNorm: weight 1, bias 0.

    Linear heads keep PyTorch's default unless ``linear_std`` (weights ~ N(0, std), zero bias) or
    ``zero_linear_bias`` is given, as each architecture's reference implementation does.
    """
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            if linear_std is not None or zero_linear_bias:
                nn.init.zeros_(m.bias)
