"""Content keys of everything stored teacher outputs depend on: teacher weights, data, transform, options."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

FORMAT_VERSION = 1


def sha256() -> "hashlib._Hash":
    return hashlib.sha256()


def _update_tensor(h: "hashlib._Hash", t: Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint_module(net: nn.Module) -> str:
    """SHA-256 over the class name and every ``state_dict`` entry (name, dtype, shape, bytes)."""
    h = sha256()
    h.update(type(net).__qualname__.encode())
    for name, value in sorted(net.state_dict().items()):
        h.update(name.encode())
        if isinstance(value, Tensor):
            _update_tensor(h, value)
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def _update_sample(h: "hashlib._Hash", sample: Any) -> None:
    if isinstance(sample, Tensor):
        _update_tensor(h, sample)
    elif isinstance(sample, dict):
        for key in sorted(sample):
            h.update(str(key).encode())
            _update_sample(h, sample[key])
    elif isinstance(sample, (list, tuple)):
        for item in sample:
            _update_sample(h, item)
    else:
        h.update(repr(sample).encode())


def fingerprint_dataset(dataset: Dataset) -> str:
    """Content hash of a dataset: a ``fingerprint()`` method when it has one; else its tensors and arrays
    (``TensorDataset``, torchvision's CIFAR ``data``), sample/target lists, type, length, ``root``/``train``
    attributes, and those of a wrapped ``.dataset`` (``Subset`` indices included)."""
    custom = getattr(dataset, "fingerprint", None)
    if callable(custom):
        return str(custom())
    h = sha256()
    h.update(type(dataset).__qualname__.encode())
    if hasattr(dataset, "tensors"):
        for t in dataset.tensors:
            _update_tensor(h, t)
    elif isinstance(dataset, (list, tuple)):  # a plain list of samples: hash every sample
        for sample in dataset:
            _update_sample(h, sample)
    else:  # tensors, arrays (torchvision's CIFAR .data) and sample lists (ImageFolder's .samples)
        for name, value in sorted(vars(dataset).items()):
            if isinstance(value, Tensor):
                _update_tensor(h, value)
            elif isinstance(value, np.ndarray):
                h.update(f"{name}:{value.dtype}:{value.shape}".encode())
                h.update(np.ascontiguousarray(value).tobytes())
            elif name in ("targets", "samples", "imgs", "labels") and isinstance(value, (list, tuple)):
                h.update(f"{name}={value!r}".encode())
    h.update(str(len(dataset)).encode())  # type: ignore[arg-type]
    for attr in ("root", "train", "split"):
        if hasattr(dataset, attr):
            h.update(f"{attr}={getattr(dataset, attr)!r}".encode())
    inner = getattr(dataset, "dataset", None)
    if isinstance(inner, Dataset):  # Subset and friends
        h.update(fingerprint_dataset(inner).encode())
        if hasattr(dataset, "indices"):
            h.update(np.asarray(dataset.indices).tobytes())
    return h.hexdigest()


def fingerprint_tokenizer(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's full definition (a fast tokenizer's JSON: vocabulary, merges, normalizer,
    special tokens) or, for other tokenizers, of its sorted vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def transform_fingerprint(transform: Any) -> str:
    return hashlib.sha256(repr(transform).encode()).hexdigest() if transform is not None else "none"


def outputs_key(teacher: nn.Module, dataset: Dataset, data_config: Any = None, transform: Any = None,
              fp16: bool = False, top_k: Optional[int] = None) -> str:
    """The directory name of a cache: a hash of teacher weights, data, transform and storage options."""
    blob = json.dumps({
        "format": FORMAT_VERSION,
        "teacher": fingerprint_module(teacher),
        "dataset": fingerprint_dataset(dataset),
        "data_config": data_config,
        "transform": transform_fingerprint(transform),
        "fp16": bool(fp16),
        "top_k": top_k,
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]

