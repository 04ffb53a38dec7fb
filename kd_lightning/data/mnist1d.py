"""MNIST-1D (Greydanus 2020), generated offline with the ``mnist1d`` package and cached as .npz."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .arrays import ArrayDataModule


def generate_mnist1d(seed: int = 42, num_samples: int = 5000) -> dict:
    """Run the package's generator (``make_dataset``; never ``get_dataset``, which downloads)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    d = make_dataset(args)
    return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}


def load_mnist1d(cache_dir: Optional[str] = None, seed: int = 42, num_samples: int = 5000) -> dict:
    """Generated arrays, from ``cache_dir`` when present (written atomically on first use)."""
    if cache_dir is None:
        return generate_mnist1d(seed, num_samples)
    path = Path(cache_dir) / f"mnist1d_seed{seed}_n{num_samples}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return {k: z[k] for k in ("x", "y", "x_test", "y_test")}
        except Exception:  # a damaged cache file is regenerated, never trusted
            pass
    data = generate_mnist1d(seed, num_samples)
    from .. import io as kd_io

    with kd_io.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **data)
    return data


class MNIST1DDataModule(ArrayDataModule):
    """The MNIST-1D benchmark: 4,000 training sequences of length 40 (a validation split is taken
    from them) and 1,000 test sequences, 10 classes, from the published generator settings.

    ``transfer_samples`` > 0 adds that many unlabeled sequences drawn from the generator with
    ``transfer_seed`` (a transfer set for distillation; see :mod:`kd_lightning.data.transfer`).
    """

    def __init__(self, cache_dir: Optional[str] = None, data_seed: int = 42, transfer_samples: int = 0,
                 transfer_seed: int = 1234, **kwargs):
        super().__init__(**kwargs)
        if int(transfer_samples) < 0:
            raise ValueError(f"transfer_samples must be >= 0, got {transfer_samples}")
        if transfer_samples and int(transfer_seed) == int(data_seed):
            raise ValueError(
                f"transfer_seed={transfer_seed} equals data_seed: the transfer set would repeat the training and "
                "test sequences; choose another transfer_seed")
        self.cache_dir = cache_dir
        self.data_seed = data_seed
        self.transfer_samples = int(transfer_samples)
        self.transfer_seed = int(transfer_seed)
        self._transfer: Optional[TensorDataset] = None

    def load_arrays(self):
        d = load_mnist1d(self.cache_dir, self.data_seed)
        return d["x"], d["y"], d["x_test"], d["y_test"]

    def transfer_dataset(self) -> Optional[TensorDataset]:
        """``transfer_samples`` unlabeled sequences (inputs only) from the generator run with
        ``transfer_seed``, or None. The labels the generator also makes are thrown away."""
        if self.transfer_samples == 0:
            return None
        if self._transfer is None:
            n = self.transfer_samples
            d = load_mnist1d(self.cache_dir, self.transfer_seed, num_samples=-(-n // 10) * 10)
            x = np.concatenate([d["x"], d["x_test"]])[:n]
            self._transfer = TensorDataset(torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32))
        return self._transfer
