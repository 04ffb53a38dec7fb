"""Staged: switch from one loss to another at a given epoch (e.g. two-stage FitNet)."""
from __future__ import annotations

from typing import Dict, List

from torch import Tensor

from .base import CompositeLoss, DistillInputs, Loss


class Staged(CompositeLoss):
    """Use ``first`` for epochs ``<= switch_epoch`` (1-based ``inputs.epoch``) and ``then`` afterwards.

    Both losses are built, tapped and owned (their parameters are trained and saved) from the
    start; the one not in use contributes nothing. The original FitNet recipe is
    ``Staged(FitNet(...), KD(...), switch_epoch=N)``: hint training, then KD. Layers behind the hint
    receive no gradient in the first stage (the hint loss does not depend on them), but an optimizer
    with weight decay still decays them.
    """

    def __init__(self, first: Loss, then: Loss, switch_epoch: int = 1):
        super().__init__()
        if not isinstance(first, Loss) or not isinstance(then, Loss):
            raise TypeError("Staged takes two Loss instances, first and then")
        if switch_epoch < 0:
            raise ValueError(f"switch_epoch must be >= 0 (0: 'then' from the start), got {switch_epoch!r}")
        self.first = first
        self.then = then
        self.switch_epoch = float(switch_epoch)
        self.check_families()

    def current(self, epoch: float) -> Loss:
        """The loss in use at (1-based) ``epoch``."""
        return self.first if epoch <= self.switch_epoch else self.then

    def parts(self) -> List[Loss]:
        # The later stage first: its temperature is the one the run ends with.
        return [self.then, self.first]

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        return self.current(inputs.epoch)(inputs)

    def extra_repr(self) -> str:
        return f"switch_epoch={self.switch_epoch:g}"
