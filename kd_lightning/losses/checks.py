"""Argument checks shared by the losses and the functional core: one clear error per bad value."""
from __future__ import annotations

import math
from typing import Dict


def check_temperature(temperature: float) -> float:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(
            f"temperature must be a positive finite number, got {temperature!r}; "
            "use e.g. temperature=4.0 (CIFAR convention) or 1.0 (ImageNet)"
        )
    return float(temperature)


def check_weights(**weights: float) -> Dict[str, float]:
    """Weights must be finite and non-negative, and not all zero."""
    out = {}
    for name, value in weights.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        out[name] = float(value)
    if out and all(v == 0 for v in out.values()):
        names = ", ".join(out)
        raise ValueError(f"all loss weights are zero ({names}): nothing would be trained; set at least one > 0")
    return out


def check_label_smoothing(label_smoothing: float) -> float:
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    return float(label_smoothing)
