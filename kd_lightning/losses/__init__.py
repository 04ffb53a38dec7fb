"""Distillation objectives: ``nn.Module`` wrappers over :mod:`kd_lightning.losses.functional`."""
from .base import Compose, DistillInputs, Objective, resolve_pairs
from .ce import CE
