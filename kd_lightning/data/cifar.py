"""CIFAR-10 / CIFAR-100 as a LightningDataModule, with the augmentation of the distillation benchmarks.

Training images get RandomCrop(32, padding=4) + horizontal flip; all images are normalized with the
per-channel statistics of the chosen data set. Validation uses the test split unless ``val_split``
holds out part of the training set (evaluated without augmentation). Data are read from the
torchvision layout under ``data_dir`` (``cifar-100-python/`` or ``cifar-10-batches-py/``) and only
downloaded when ``download=True``.
"""
from __future__ import annotations

import copy
import os
from typing import Optional, Union

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .indexed import IndexedDataset
from .loaders import SplitLoaders

# name -> (torchvision class name, folder, files that must exist, classes, train size, mean, std)
_SPECS = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"], 10, 50_000,
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train", "test", "meta"], 100, 50_000,
                 (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


class CIFARDataModule(SplitLoaders, L.LightningDataModule):
    """CIFAR-10 or CIFAR-100 (``name``) from ``data_dir``.

    Args:
        val_split: 0 validates on the test split (the published protocol); an int > 0 holds out that
            many training images, a float in (0, 1) that fraction (chosen with ``seed``).
        num_classes: when given, must equal the data set's class count (a config check).
        num_train: when given, the size the config assumes for the training index space (CRD's memory
            bank); must be at least the number of training images.
        return_index: training samples become ``(x, y, index)``, the index being the image's position in
            the full training split (stable whatever ``val_split``).
    """

    def __init__(self, name: str = "cifar100", data_dir: str = "data", batch_size: int = 64, num_workers: int = 4,
                 pin_memory: bool = True, persistent_workers: bool = True, download: bool = False,
                 val_split: Union[int, float] = 0, num_classes: Optional[int] = None, return_index: bool = False,
                 seed: int = 42, num_train: Optional[int] = None, eval_batch_size: Optional[int] = None):
        super().__init__()
        key = str(name).lower().replace("-", "")
        if key not in _SPECS:
            raise ValueError(f"unknown CIFAR data set {name!r}; use 'cifar10' or 'cifar100'")
        spec = _SPECS[key]
        self.name = key
        self.num_classes = spec[3]
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ValueError(f"{key} has {self.num_classes} classes but num_classes={num_classes}; "
                             f"set data.num_classes={self.num_classes}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        total = spec[4]
        is_fraction = isinstance(val_split, float) and 0 < val_split < 1
        if not (is_fraction or (float(val_split).is_integer() and 0 <= val_split < total)):
            raise ValueError(f"val_split must be a count in [0, {total}) or a fraction in (0, 1), got {val_split!r}")
        if num_train is not None and int(num_train) < total:
            raise ValueError(f"num_train={num_train} is smaller than the {total} training images of {key}; "
                             f"set data.num_train={total}")
        self.data_dir = os.path.expanduser(str(data_dir))
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.download = download
        self.val_split = val_split
        self.return_index = return_index
        self.seed = seed
        self.num_train_total = total
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    # ---------------------------------------------------------------------------------- transforms
    @property
    def mean_std(self):
        return _SPECS[self.name][5], _SPECS[self.name][6]

    def train_transform(self):
        from torchvision import transforms as T

        mean, std = self.mean_std
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])

    def eval_transform(self):
        from torchvision import transforms as T

        mean, std = self.mean_std
        return T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    # ---------------------------------------------------------------------------------- data on disk
    def _dataset_class(self):
        import torchvision.datasets

        return getattr(torchvision.datasets, _SPECS[self.name][0])

    def _missing_files(self):
        folder = os.path.join(self.data_dir, _SPECS[self.name][1])
        return [os.path.join(folder, f) for f in _SPECS[self.name][2] if not os.path.isfile(os.path.join(folder, f))]

    def prepare_data(self) -> None:
        """Download (once, on one process) when ``download=True``; otherwise do nothing."""
        if self.download and self._missing_files():
            cls = self._dataset_class()
            cls(self.data_dir, train=True, download=True)
            cls(self.data_dir, train=False, download=True)

    def _load(self, train: bool):
        try:
            return self._dataset_class()(self.data_dir, train=train, transform=None, download=False)
        except RuntimeError as err:  # torchvision's checksum test failed
            raise RuntimeError(
                f"{self.name} files in {self.data_dir!r} are incomplete or corrupted ({err}); delete "
                f"{os.path.join(self.data_dir, _SPECS[self.name][1])} and run again with data.download=true") from err

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        if self.download and self._missing_files():
            self.prepare_data()  # used outside a Trainer, which would have called prepare_data first
        missing = self._missing_files()
        if missing:
            raise FileNotFoundError(
                f"{self.name} was not found in data_dir={self.data_dir!r} (missing {', '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''}). Download it once with data.download=true, or point "
                "data.data_dir (or the KD_DATA_DIR environment variable) at a folder that holds "
                f"{_SPECS[self.name][1]}/.")
        train_raw = self._load(train=True)
        test_raw = self._load(train=False)
        found = len(train_raw.classes)
        if found != self.num_classes:
            raise ValueError(f"the {self.name} files in {self.data_dir!r} list {found} classes, "
                             f"expected {self.num_classes}")
        n_val = self._n_val(len(train_raw))
        if n_val >= len(train_raw):
            raise ValueError(f"val_split={self.val_split} leaves no training images out of {len(train_raw)}")

        # Two views of the same arrays: augmented for training, plain for evaluation.
        train_aug = train_raw
        train_aug.transform = self.train_transform()
        train_plain = copy.copy(train_raw)
        train_plain.transform = self.eval_transform()
        test_raw.transform = self.eval_transform()

        train_ds: Dataset = IndexedDataset(train_aug) if self.return_index else train_aug
        if n_val:
            order = torch.randperm(len(train_raw), generator=torch.Generator().manual_seed(self.seed)).tolist()
            self.train_set = Subset(train_ds, order[n_val:])
            self.val_set = Subset(train_plain, order[:n_val])
        else:
            self.train_set, self.val_set = train_ds, test_raw
        self.test_set = test_raw

    def _n_val(self, total: int) -> int:
        if isinstance(self.val_split, float) and 0 < self.val_split < 1:
            return int(round(total * self.val_split))
        return int(self.val_split)

    @property
    def num_train(self) -> int:
        """Images in the training split actually used (after any validation hold-out)."""
        if self.train_set is not None:
            return len(self.train_set)
        return self.num_train_total - self._n_val(self.num_train_total)

    # ---------------------------------------------------------------------------------- loaders

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, train=False)

