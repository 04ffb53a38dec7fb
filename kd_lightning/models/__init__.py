"""Model builders and the registry of architectures by name; nothing here knows about distillation."""
from . import presets  # noqa: F401  (fills the registry)
from .cifar import CIFAR_MODELS, cifar_model
from .hub import timm_model, torchvision_model
from .mnist1d import CNN1D, ResidualMLP
from .registry import ModelEntry, create_model, list_models, model_entry, register_model

__all__ = ["CNN1D", "ResidualMLP", "CIFAR_MODELS", "cifar_model", "torchvision_model", "timm_model",
           "create_model", "list_models", "model_entry", "register_model", "ModelEntry"]
