"""scikit-learn's bundled 8x8 handwritten digits (1,797 images), a second offline real data set."""
from __future__ import annotations

import numpy as np

from .arrays import ArrayDataModule


class DigitsDataModule(ArrayDataModule):
    """Digits flattened to 64 features scaled to [0, 1]; a fixed stratified-free 80/20 train/test split."""

    def __init__(self, test_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.test_fraction = test_fraction

    def load_arrays(self):
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype(np.float32)
        perm = np.random.default_rng(0).permutation(len(y))
        n_test = int(round(len(y) * self.test_fraction))
        te, tr = perm[:n_test], perm[n_test:]
        return x[tr], y[tr], x[te], y[te]
