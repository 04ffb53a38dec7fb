"""Data sets and a DataModule wrapper whose batches carry stored teacher outputs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate

from ..batch import unpack
from ..exact_resume import ResumableSampler
from ..data.wrapper import WrappedDataModule
from .store import TeacherOutputsError, TeacherOutputs
from .transforms import check_transform, dataset_transform


def _fetch_base(dataset: Dataset, idx: Tensor, collate_fn: Callable) -> Any:
    """A collated batch of ``dataset[idx]``, vectorized for tensor-backed datasets and datasets with a
    ``get_batch(indices)`` method (e.g. :class:`~kd_lightning.data.transfer.TransferSetDataset`)."""
    get_batch = getattr(dataset, "get_batch", None)
    if callable(get_batch):
        return get_batch(idx)
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and type(dataset).__getitem__ is torch.utils.data.TensorDataset.__getitem__:
        return tuple(t[idx] for t in tensors)
    getitems = getattr(dataset, "__getitems__", None)
    items = getitems(idx.tolist()) if getitems else [dataset[i] for i in idx.tolist()]
    return collate_fn(items)


def _passthrough(batch: Any) -> Any:
    return batch


class TeacherOutputsDataset(Dataset):
    """``dataset`` plus its teacher logits: item ``i`` is ``{"input", "target", "index": i, "teacher_logits"}``.

    Dict samples of the base dataset keep their keys (and ``labeled``); tuple samples ``(x, y[, i])``
    become ``input``/``target``. Batched reads (``__getitems__``, one memory-map gather per batch) are
    used by the loaders of :class:`TeacherOutputsDataModule`, which pass ``collate_fn=passthrough``.
    """

    def __init__(self, dataset: Dataset, outputs: TeacherOutputs, collate_fn: Optional[Callable] = None,
                 input_key: Optional[str] = None, target_key: Optional[str] = None):
        if len(dataset) != len(outputs):  # type: ignore[arg-type]
            raise TeacherOutputsError(f"the dataset has {len(dataset)} samples but the stored teacher outputs have "  # type: ignore[arg-type]
                                    f"{len(outputs)} rows ({outputs!r})")
        self.dataset, self.outputs = dataset, outputs
        self.collate_fn = collate_fn or default_collate
        self.input_key, self.target_key = input_key, target_key

    def __len__(self) -> int:
        return len(self.outputs)

    def _as_dict(self, sample: Any, index: Any, logits: Tensor) -> Dict[str, Any]:
        if isinstance(sample, Mapping):
            out = dict(sample)
        else:
            b = unpack(sample, self.input_key, self.target_key)
            out = {"input": b.x}
            if b.y is not None:
                out["target"] = b.y
        out["index"] = index
        out["teacher_logits"] = logits
        return out

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self._as_dict(self.dataset[i], i, self.outputs.rows(i))


class _BatchedTeacherOutputsDataset(TeacherOutputsDataset):
    """Same samples, fetched a batch at a time; only for loaders with ``collate_fn=_passthrough``."""

    def __getitems__(self, indices: List[int]) -> Dict[str, Any]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self._as_dict(_fetch_base(self.dataset, idx, self.collate_fn), idx, self.outputs.rows(idx))


# ------------------------------------------------------------------------------ the data module
def _loader_settings(loader: DataLoader) -> Dict[str, Any]:
    return {"batch_size": loader.batch_size, "num_workers": loader.num_workers, "pin_memory": loader.pin_memory,
            "drop_last": loader.drop_last, "persistent_workers": loader.persistent_workers,
            "shuffle": isinstance(loader.sampler, RandomSampler)}


class TeacherOutputsDataModule(WrappedDataModule):
    """Wraps ``datamodule`` so its train/val/test batches carry stored ``teacher_logits``.

    The stored outputs are built (or reused) in :meth:`prepare_outputs`, called by :meth:`setup` or earlier by the
    application so DDP workers only read. Loader settings (batch size, workers, shuffling) come from the
    wrapped module's loaders. Use it with ``DistillationModule(student, teacher=None, loss=...)``.
    """

    def __init__(self, datamodule: L.LightningDataModule, teacher: nn.Module, root: Union[str, os.PathLike],
                 data_config: Any = None, fp16: bool = False, top_k: Optional[int] = None,
                 allow_random_transform: bool = False, splits: Iterable[str] = ("train", "val", "test"),
                 device: Union[str, torch.device, None] = None, verify: bool = True, batch_size: int = 512):
        super().__init__(datamodule)
        self.teacher = teacher
        self.root = Path(root)
        self.data_config = data_config
        self.fp16, self.top_k = fp16, top_k
        self.allow_random_transform = allow_random_transform
        self.splits = tuple(splits)
        self.device, self.verify, self.build_batch_size = device, verify, batch_size
        self.outputs: Dict[str, TeacherOutputs] = {}
        self._settings: Dict[str, Dict[str, Any]] = {}
        self._datasets: Dict[str, Dataset] = {}
        self._collate: Dict[str, Callable] = {}

    def _loader(self, split: str) -> Optional[DataLoader]:
        fn = getattr(self.datamodule, f"{split}_dataloader", None)
        try:
            return fn() if fn is not None else None
        except NotImplementedError:
            return None

    def prepare_outputs(self) -> Dict[str, TeacherOutputs]:
        if self.outputs:
            return self.outputs
        self.datamodule.setup("fit")
        if "test" in self.splits:
            self.datamodule.setup("test")
        for split in self.splits:
            loader = self._loader(split)
            if loader is None:
                continue
            if not isinstance(loader, DataLoader):
                raise TypeError(f"{split}_dataloader() must return one DataLoader to store teacher outputs for, got {type(loader).__name__}")
            ds = loader.dataset
            transform = dataset_transform(ds)
            if split == "train":  # eval transforms are deterministic in practice
                check_transform(ds, self.allow_random_transform, transform=transform)
            collate = loader.collate_fn or default_collate
            self.outputs[split] = TeacherOutputs.get_or_build(
                self.teacher, ds, self.root, data_config=self.data_config, transform=transform, fp16=self.fp16,
                top_k=self.top_k, allow_random_transform=True, verify=self.verify, name=split,
                collate_fn=collate, device=self.device, batch_size=self.build_batch_size)
            self._settings[split] = _loader_settings(loader)
            self._datasets[split] = ds
            self._collate[split] = collate
        return self.outputs

    def setup(self, stage: Optional[str] = None) -> None:
        self.datamodule.setup(stage)
        self.prepare_outputs()

    def outputs_dataloader(self, split: str) -> DataLoader:
        self.prepare_outputs()
        if split not in self.outputs:
            loader = self._loader(split)
            if loader is None:
                raise ValueError(f"the wrapped data module has no {split} loader")
            return loader
        s = dict(self._settings[split])
        shuffle = s.pop("shuffle")
        ds = _BatchedTeacherOutputsDataset(self._datasets[split], self.outputs[split], self._collate[split])
        # Shuffled as the wrapped loader is, and resumable mid-epoch exactly (kd_lightning.exact_resume).
        return DataLoader(ds, sampler=ResumableSampler(ds) if shuffle else None, collate_fn=_passthrough, **s)

    def train_dataloader(self) -> DataLoader:
        return self.outputs_dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.outputs_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.outputs_dataloader("test")
