"""DataLoaders shared by the on-disk image data modules (CIFAR, ImageFolder)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..exact_resume import train_sampler


def loader_kwargs(num_workers: int, pin_memory: bool, persistent_workers: bool) -> dict:
    """DataLoader options that are valid on this machine (no pinning without CUDA, no persistent
    workers without workers)."""
    return dict(num_workers=num_workers, pin_memory=bool(pin_memory and torch.cuda.is_available()),
                persistent_workers=bool(persistent_workers and num_workers > 0))


class SplitLoaders:
    """Train/val/predict loaders for a data module with ``train_set``, ``val_set``, ``batch_size``,
    ``eval_batch_size`` and the loader options; ``test_dataloader`` stays the subclass's own."""

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        # The training order resumes mid-epoch exactly (kd_lightning.exact_resume) and is shuffle=True's.
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size,
                          sampler=train_sampler(dataset, train),
                          **loader_kwargs(self.num_workers, self.pin_memory, self.persistent_workers))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
