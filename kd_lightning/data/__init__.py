"""LightningDataModules; nothing here knows about distillation."""
from .arrays import ArrayDataModule
from .cifar import CIFARDataModule
from .digits import DigitsDataModule
from .imagefolder import ImageFolderDataModule
from .indexed import IndexedDataset
from .mnist1d import MNIST1DDataModule
from .transfer import TransferDataModule

__all__ = ["ArrayDataModule", "MNIST1DDataModule", "DigitsDataModule", "CIFARDataModule", "ImageFolderDataModule",
           "IndexedDataset", "TransferDataModule"]
