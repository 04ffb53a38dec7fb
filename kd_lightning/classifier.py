"""ClassifierModule: labels-only training (teachers, baselines) through the distillation module's path."""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import nn

from .losses.ce import CE
from .module import DistillationModule


class ClassifierModule(DistillationModule):
    """A plain classifier: ``DistillationModule`` with no teacher and a cross-entropy loss.

    Its checkpoints store the network under ``student.``, which :func:`kd_lightning.teacher.load_teacher`
    reads back when the trained classifier becomes a teacher.
    """

    def __init__(self, model: nn.Module, optimizer: Optional[Callable[..., Any]] = None,
                 scheduler: Optional[Callable[..., Any]] = None, label_smoothing: float = 0.0, **kwargs: Any):
        super().__init__(student=model, teacher=None, loss=CE(label_smoothing), optimizer=optimizer,
                         scheduler=scheduler, **kwargs)

    @property
    def model(self) -> nn.Module:
        return self.student
