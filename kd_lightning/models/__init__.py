"""Model builders; nothing here knows about distillation."""
from .mnist1d import CNN1D, ResidualMLP

__all__ = ["CNN1D", "ResidualMLP"]
