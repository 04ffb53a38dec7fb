"""kd-lightning: knowledge distillation as PyTorch Lightning modules with Hydra configs."""
from .classifier import ClassifierModule
from .lm import CausalLMDistillationModule
from .module import DistillationModule
from .taps import FeatureTaps

__all__ = ["DistillationModule", "ClassifierModule", "CausalLMDistillationModule", "FeatureTaps"]
__version__ = "0.1.0"
