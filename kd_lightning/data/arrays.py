"""A LightningDataModule over in-memory arrays (MNIST-1D, digits): split, batch, optionally index."""
from __future__ import annotations

from typing import Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..exact_resume import train_sampler


class IndexedTensorDataset(Dataset):
    """(x, y, index) triples over tensors, for losses that key a memory bank by sample index."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


class ArrayDataModule(L.LightningDataModule):
    """Serves ``(x, y)`` arrays: a validation split is taken from the training arrays by a fixed seed.

    Subclasses implement :meth:`load_arrays` returning ``(x_train, y_train, x_test, y_test)``.
    ``num_classes``, when given, is checked against the labels so a wrong config fails before training.
    """

    def __init__(self, batch_size: int = 100, val_fraction: float = 0.1, num_workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = False, num_classes: Optional[int] = None,
                 return_index: bool = False, seed: int = 42, eval_batch_size: Optional[int] = None, **_: object):
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or max(batch_size, 500))
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.expected_classes = num_classes
        self.return_index = return_index
        self.seed = seed
        self._ready = False

    def load_arrays(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if self._ready:
            return
        x_tr, y_tr, x_te, y_te = self.load_arrays()
        found = int(max(y_tr.max(), y_te.max())) + 1
        if self.expected_classes is not None and found != int(self.expected_classes):
            raise ValueError(
                f"{type(self).__name__}: the labels span {found} classes but num_classes={self.expected_classes}; "
                f"set data.num_classes={found}")
        self.num_classes = found
        perm = np.random.default_rng(self.seed).permutation(len(y_tr))
        n_val = int(round(len(y_tr) * self.val_fraction))
        val_idx, tr_idx = perm[:n_val], perm[n_val:]
        as_x = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
        as_y = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long)
        self.x_train, self.y_train = as_x(x_tr[tr_idx]), as_y(y_tr[tr_idx])
        self.x_val, self.y_val = as_x(x_tr[val_idx]), as_y(y_tr[val_idx])
        self.x_test, self.y_test = as_x(x_te), as_y(y_te)
        self._ready = True

    @property
    def num_train(self) -> int:
        self.setup()
        return len(self.y_train)

    def _loader(self, x, y, shuffle: bool, indexed: bool = False) -> DataLoader:
        ds = IndexedTensorDataset(x, y) if indexed else TensorDataset(x, y)
        # The training order resumes mid-epoch exactly (kd_lightning.exact_resume) and is shuffle=True's.
        return DataLoader(ds, batch_size=self.batch_size if shuffle else self.eval_batch_size,
                          sampler=train_sampler(ds, shuffle),
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.x_train, self.y_train, shuffle=True, indexed=self.return_index)

    def val_dataloader(self) -> DataLoader:
        if len(self.y_val) == 0:  # no split requested: validate on the test set
            return self._loader(self.x_test, self.y_test, shuffle=False)
        return self._loader(self.x_val, self.y_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.x_test, self.y_test, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
