"""kd-lightning: knowledge distillation as PyTorch Lightning modules with Hydra configs."""
from .classifier import ClassifierModule
from .module import DistillationModule
from .taps import FeatureTaps

__all__ = ["DistillationModule", "ClassifierModule", "FeatureTaps"]
__version__ = "0.1.0"
from .lm import CausalLMDistillationModule  # noqa: E402

__all__ += ["CausalLMDistillationModule"]
