"""LightningDataModules; nothing here knows about distillation."""
from .arrays import ArrayDataModule
from .digits import DigitsDataModule
from .mnist1d import MNIST1DDataModule

__all__ = ["ArrayDataModule", "MNIST1DDataModule", "DigitsDataModule"]
