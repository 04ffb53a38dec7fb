"""IndexedDataset: make any map-style dataset also return each sample's index.

Losses that keep per-sample state (CRD's memory banks, teacher-logit caches) need to know which
samples a batch holds. ``IndexedDataset(ds)[i]`` is ``(x, y, i)`` for a dataset of ``(x, y)`` pairs and
``{**item, "index": i}`` for a dataset of dicts; :func:`kd_lightning.batch.unpack` turns the third
element (or the ``"index"`` key) into ``DistillInputs.index``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

from .wrapper import Delegating


class IndexedDataset(Delegating, Dataset):
    """Wrap ``dataset`` so each item carries its index: ``(x, y) -> (x, y, index)``.

    Other attributes (``classes``, ``targets`` ...) are read through from the wrapped dataset.
    """

    wrapped_attr = "dataset"

    def __init__(self, dataset: Any, index_key: str = "index"):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"IndexedDataset needs a map-style dataset (with __getitem__ and __len__), "
                            f"got {type(dataset).__name__}")
        self.dataset = dataset
        self.index_key = index_key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if isinstance(item, Mapping):
            if self.index_key in item:
                raise ValueError(f"the wrapped dataset's items already have a {self.index_key!r} key")
            return {**item, self.index_key: index}
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return item[0], item[1], index
        kind = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else type(item).__name__
        raise ValueError(f"IndexedDataset expects items (x, y) or dicts; the wrapped dataset returned {kind}")

    def __repr__(self) -> str:
        return f"IndexedDataset({self.dataset!r})"
