"""Model builders; nothing here knows about distillation."""
from .cifar import CIFAR_MODELS, cifar_model
from .hub import timm_model, torchvision_model
from .mnist1d import CNN1D, ResidualMLP

__all__ = ["CNN1D", "ResidualMLP", "CIFAR_MODELS", "cifar_model", "torchvision_model", "timm_model"]
