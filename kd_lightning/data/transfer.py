"""Transfer sets: unlabeled samples that only the distillation term learns from.

:class:`TransferDataModule` wraps any LightningDataModule and appends a transfer set to its *training*
data. Training items become dicts ``{"input", "target", "labeled", "index"}``: labeled samples keep their
target and ``labeled=True``; transfer samples get ``target=-1`` and ``labeled=False``. Shuffling mixes the
two, so batches carry both kinds in proportion to their sizes (an epoch covers both; scale
``max_epochs`` or the batch size if you want the labeled budget unchanged). Losses honour
``DistillInputs.labeled``: CE skips unlabeled samples, the KD term uses all of them.

The wrapped data module keeps serving its labeled data only, so teachers and labels-only baselines that
train on it never see the transfer set; ``kd-train`` wraps the data for the student stage only.

Where the transfer samples come from: ``transfer=`` (a Dataset of inputs, a tensor, or a Dataset of
``(x, ...)`` tuples whose other fields are ignored), or else the wrapped module's ``transfer_dataset()``
(e.g. :class:`~kd_lightning.data.MNIST1DDataModule` with ``transfer_samples=N``: N more sequences from
the generator with another seed).
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from ..batch import unpack
from ..exact_resume import sampler_like
from .wrapper import WrappedDataModule


_NO_LABEL = torch.tensor(-1, dtype=torch.long)


def _input_of(sample: Any) -> Any:
    if isinstance(sample, Tensor):
        return sample
    return unpack(sample).x


class TransferSetDataset(Dataset):
    """``labeled`` followed by ``transfer``: item ``i`` is a dict with ``labeled = i < len(labeled)``."""

    def __init__(self, labeled: Dataset, transfer: Union[Dataset, Tensor]):
        if isinstance(transfer, Tensor):
            transfer = TensorDataset(transfer)
        self.labeled, self.transfer = labeled, transfer
        self.num_labeled = len(labeled)  # type: ignore[arg-type]
        self.num_transfer = len(transfer)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.num_labeled + self.num_transfer

    def __getitem__(self, i: int) -> Dict[str, Any]:
        if i < 0:
            i += len(self)
        if i < self.num_labeled:
            sample = self.labeled[i]
            if isinstance(sample, Mapping):
                out = dict(sample)
                out.setdefault("labeled", True)
            else:
                b = unpack(sample)
                if b.y is None:
                    raise ValueError("the labeled dataset yields samples without a target")
                out = {"input": b.x, "target": torch.as_tensor(b.y), "labeled": True}
        else:
            out = {"input": _input_of(self.transfer[i - self.num_labeled]), "target": _NO_LABEL, "labeled": False}
        out["index"] = i
        return out

    def get_batch(self, indices: Union[Sequence[int], Tensor]) -> Dict[str, Any]:
        """The collated batch of ``indices`` (what a DataLoader with ``default_collate`` would build),
        gathered with one indexing per tensor when both parts are ``TensorDataset``s."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        lab = idx < self.num_labeled
        a = _tensors_at(self.labeled, idx[lab])
        b = _tensors_at(self.transfer, idx[~lab] - self.num_labeled)
        if a is None or b is None or len(a) < 2:
            return default_collate([self[i] for i in idx.tolist()])
        xl, yl, xt = a[0], a[1], b[0]
        x = xl.new_empty((len(idx),) + tuple(xl.shape[1:]))
        x[lab], x[~lab] = xl, xt.to(xl.dtype)
        y = torch.full((len(idx),), -1, dtype=torch.long)
        y[lab] = yl.long()
        return {"input": x, "target": y, "labeled": lab, "index": idx}

    def fingerprint(self) -> str:
        """Content hash for stored teacher outputs (see :func:`kd_lightning.cache.fingerprint_dataset`)."""
        from ..cache import fingerprint_dataset

        h = hashlib.sha256(b"TransferSetDataset")
        h.update(fingerprint_dataset(self.labeled).encode())
        h.update(fingerprint_dataset(self.transfer).encode())
        return h.hexdigest()


def _tensors_at(dataset: Dataset, idx: Tensor) -> Optional[tuple]:
    tensors = getattr(dataset, "tensors", None)
    if tensors is None or type(dataset).__getitem__ is not TensorDataset.__getitem__:
        return None
    return tuple(t[idx] for t in tensors)


class _BatchedTransferSetDataset(TransferSetDataset):
    """Fetches whole batches (``__getitems__``); only for loaders with ``collate_fn=_passthrough``."""

    def __getitems__(self, indices: List[int]) -> Dict[str, Any]:
        return self.get_batch(indices)


def _passthrough(batch: Any) -> Any:
    return batch


class TransferDataModule(WrappedDataModule):
    """``datamodule`` with a transfer set appended to its training data (validation and test unchanged)."""

    def __init__(self, datamodule: L.LightningDataModule, transfer: Union[Dataset, Tensor, None] = None):
        super().__init__(datamodule)
        self._transfer = transfer

    def transfer_set(self) -> Dataset:
        transfer = self._transfer
        if transfer is None:
            make = getattr(self.datamodule, "transfer_dataset", None)
            transfer = make() if callable(make) else None
        if transfer is None:
            raise ValueError(f"{type(self.datamodule).__name__} provides no transfer set: pass transfer=... "
                             "or configure it (e.g. MNIST1DDataModule(transfer_samples=4000))")
        return TensorDataset(transfer) if isinstance(transfer, Tensor) else transfer

    def train_dataloader(self) -> DataLoader:
        base = self.datamodule.train_dataloader()
        default = base.collate_fn in (None, default_collate)
        # With the default collation whole batches are gathered at once (no per-sample Python work).
        ds = (_BatchedTransferSetDataset if default else TransferSetDataset)(base.dataset, self.transfer_set())
        return DataLoader(ds, batch_size=base.batch_size, sampler=sampler_like(base, ds),
                          num_workers=base.num_workers, pin_memory=base.pin_memory, drop_last=base.drop_last,
                          persistent_workers=base.persistent_workers,
                          collate_fn=_passthrough if default else base.collate_fn)


def has_transfer_set(datamodule: Any) -> bool:
    """Whether ``datamodule`` offers a transfer set through ``transfer_dataset()``."""
    make = getattr(datamodule, "transfer_dataset", None)
    return callable(make) and make() is not None


__all__: List[str] = ["TransferSetDataset", "TransferDataModule", "has_transfer_set"]
