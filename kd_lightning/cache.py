"""Teacher-output cache for offline distillation: run the teacher once, train the student on stored logits.

The teacher runs once over a data set (eval mode, ``torch.inference_mode``) and its logits are written to
memory-mapped ``.npy`` files, one row per dataset sample index, in a directory named by a hash of

* the teacher's weights (every tensor of its ``state_dict``, bit for bit),
* the data: a fingerprint of the dataset (its tensors where it has any, else its type and length) and
  the data config given by the caller,
* the transform (its ``repr``, which lists every parameter of torchvision transforms),
* the storage options (fp16, top-k).

So a retrained teacher, another split or another normalization gets another directory and never
reads stale targets. A cache directory holds ``meta.json`` and ``logits.npy`` (full storage) or
``topk_logprobs.npy`` + ``topk_indices.npy`` (top-k storage). Every array is written to a temporary
file and moved into place with ``os.replace``; ``meta.json`` (shape, dtype, key, row count, a SHA-256 of
the array bytes) is written last, so a directory without it is an unfinished write and is rebuilt, and
a directory with it is validated on open: a wrong shape, dtype, key or a truncated file is an error
(:class:`TeacherCacheError`), never silently wrong targets. Checksums are verified on request
(``verify=True``), because reading a large cache in full costs a pass over the disk.

Storage options and their exact reconstruction (see :func:`reconstruct_topk`):

* full fp32: the teacher's logits, exactly.
* ``fp16=True``: logits rounded to float16 (relative error <= 2**-11 per logit, i.e. an absolute error
  below 0.01 for |z| < 20; a logit beyond the float16 range is refused). Rows are returned as float32.
* ``top_k=k``: per sample the ``k`` largest log-probabilities ``log p_i = z_i - logsumexp(z)`` at T=1
  and their class indices. The remaining mass ``r = 1 - sum_topk p_i`` is shared equally by the other
  ``C - k`` classes, so the reconstructed logits are ``z'_i = log p_i`` for the top-k classes and
  ``z'_j = log(r / (C - k))`` for the rest: ``softmax(z')`` reproduces the top-k probabilities exactly
  and gives every other class ``r / (C - k)``. The logits differ from the teacher's by a per-row
  constant on the top-k classes (softmax-invariant), so losses that compare raw logits
  (``LogitMSE``) must not use top-k storage, and at a temperature T != 1 the tail is an approximation
  (the KD loss error is then bounded by how much mass lies outside the top-k; see the tests).

:class:`CachedLogitsDataset` serves ``{"input", "target", "index", "teacher_logits"}`` dicts (plus
``"labeled"`` when the base data has it) so shuffled loaders and DDP ranks read the rows of the samples
they actually got; :class:`CachedTeacherDataModule` wraps a LightningDataModule and caches its train,
val and test sets, and :class:`~kd_lightning.DistillationModule` with ``teacher=None`` trains on them.

Cached targets are fixed per sample: a random training transform (random crops, flips, ...) would show
the student a view the teacher never saw, so such transforms are refused unless
``allow_random_transform=True``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate

from . import io as kd_io
from .batch import unpack

FORMAT_VERSION = 1
META_NAME = "meta.json"
_FP16_MAX = float(np.finfo(np.float16).max)

# Transform classes whose output changes from call to call (torchvision v1/v2, timm, albumentations names).
_RANDOM_TRANSFORM_NAMES = {
    "AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "ColorJitter", "GaussianBlur",
    "ElasticTransform", "ScaleJitter", "RandomShortestSize", "MixUp", "CutMix", "RandomErasing",
    "RandAugmentMC", "HorizontalFlip", "VerticalFlip",
}


class TeacherCacheError(RuntimeError):
    """A teacher cache that cannot be trusted (wrong key, shape, dtype, truncated file, bad checksum)."""


class RandomTransformError(ValueError):
    """Caching teacher outputs for data whose training transform is random."""


# ----------------------------------------------------------------------------------------- hashing
def _sha() -> "hashlib._Hash":
    return hashlib.sha256()


def _update_tensor(h: "hashlib._Hash", t: Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint_module(net: nn.Module) -> str:
    """SHA-256 over the class name and every ``state_dict`` entry (name, dtype, shape, bytes)."""
    h = _sha()
    h.update(type(net).__qualname__.encode())
    for name, value in sorted(net.state_dict().items()):
        h.update(name.encode())
        if isinstance(value, Tensor):
            _update_tensor(h, value)
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def fingerprint_dataset(dataset: Dataset) -> str:
    """Content hash of a dataset: a ``fingerprint()`` method when it has one; else its tensors and arrays
    (``TensorDataset``, torchvision's CIFAR ``data``), sample/target lists, type, length, ``root``/``train``
    attributes, and those of a wrapped ``.dataset`` (``Subset`` indices included)."""
    custom = getattr(dataset, "fingerprint", None)
    if callable(custom):
        return str(custom())
    h = _sha()
    h.update(type(dataset).__qualname__.encode())
    if hasattr(dataset, "tensors"):
        for t in dataset.tensors:
            _update_tensor(h, t)
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


def dataset_transform(dataset: Any) -> Any:
    """The transform(s) a dataset applies (``transform``, ``transforms``, ``target_transform``), looking
    through ``Subset``/``ConcatDataset``-style wrappers; None when there is none."""
    found = []
    for attr in ("transform", "transforms", "train_transform"):
        t = getattr(dataset, attr, None)
        if t is not None and not isinstance(t, (str, bytes)):
            found.append(t)
    inner = getattr(dataset, "dataset", None)
    if inner is not None:
        t = dataset_transform(inner)
        if t is not None:
            found.append(t)
    for d in getattr(dataset, "datasets", None) or ():
        t = dataset_transform(d)
        if t is not None:
            found.append(t)
    if not found:
        return None
    return found[0] if len(found) == 1 else found


def find_random_transforms(transform: Any, _seen: Optional[set] = None) -> List[str]:
    """Class names of the random transforms inside ``transform`` (walks Compose, lists, RandomApply, v2)."""
    if transform is None:
        return []
    seen = _seen if _seen is not None else set()
    if id(transform) in seen:
        return []
    seen.add(id(transform))
    out: List[str] = []
    if isinstance(transform, (list, tuple)):
        for t in transform:
            out += find_random_transforms(t, seen)
        return out
    name = type(transform).__name__
    if name.startswith("Random") or name in _RANDOM_TRANSFORM_NAMES:
        out.append(name)
    for attr in ("transforms", "transform", "augmentations"):
        inner = getattr(transform, attr, None)
        if inner is not None and inner is not transform and not isinstance(inner, (str, bytes)):
            if isinstance(inner, Mapping):
                inner = list(inner.values())
            out += find_random_transforms(inner, seen)
    if isinstance(transform, nn.Module):
        for child in transform.children():
            out += find_random_transforms(child, seen)
    return list(dict.fromkeys(out))


def _is_auto(transform: Any) -> bool:
    return isinstance(transform, str) and transform == "auto"


def check_transform(dataset: Any, allow_random_transform: bool = False, what: str = "the training data",
                    transform: Any = "auto") -> None:
    """Refuse to cache teacher outputs for a dataset whose transform is random (see the module docstring)."""
    if allow_random_transform:
        return
    random_ones = find_random_transforms(dataset_transform(dataset) if _is_auto(transform) else transform)
    if random_ones:
        raise RandomTransformError(
            f"cannot cache teacher outputs for {what}: its transform is random ({', '.join(random_ones)}). "
            "Cached targets are computed once per sample, so they would not match the augmented view the "
            "student sees at each step. Train with the teacher online (no cache), drop the random "
            "transforms, or pass allow_random_transform=True to accept targets of a different view "
            "(Beyer et al. 2022 found such fixed targets generalize worse).")


def transform_fingerprint(transform: Any) -> str:
    return hashlib.sha256(repr(transform).encode()).hexdigest() if transform is not None else "none"


def cache_key(teacher: nn.Module, dataset: Dataset, data_config: Any = None, transform: Any = None,
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


# ----------------------------------------------------------------------------------- reconstruction
def topk_logprobs(logits: Tensor, k: int) -> tuple:
    """The ``k`` largest T=1 log-probabilities of each row and their class indices."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    values, indices = logp.topk(k, dim=-1)
    return values, indices


def reconstruct_topk(logprobs: Tensor, indices: Tensor, num_classes: int) -> Tensor:
    """Logits ``z'`` from top-k log-probabilities (see the module docstring).

    ``z'_i = log p_i`` on the stored classes and ``z'_j = log(r / (C - k))`` elsewhere, with
    ``r = 1 - sum_i p_i`` (clamped at the smallest float32 > 0), so ``softmax(z')`` equals the stored
    top-k probabilities exactly (up to rounding of the stored values) and spreads ``r`` evenly.
    """
    logprobs = logprobs.float()
    k = logprobs.shape[-1]
    if k >= num_classes:
        return torch.empty(logprobs.shape[0], num_classes, dtype=torch.float32,
                           device=logprobs.device).scatter_(1, indices.long(), logprobs)
    rest = (1.0 - logprobs.exp().sum(-1, keepdim=True)).clamp_min(torch.finfo(torch.float32).tiny)
    fill = torch.log(rest) - math.log(num_classes - k)
    out = fill.expand(-1, num_classes).clone()
    return out.scatter_(1, indices.long(), logprobs)


# ------------------------------------------------------------------------------------ the cache
def _file_sha(arr: np.ndarray) -> str:
    h = _sha()
    flat = arr.reshape(-1)
    step = max(1, (64 << 20) // max(1, arr.itemsize))
    for start in range(0, flat.shape[0], step):
        h.update(np.ascontiguousarray(flat[start:start + step]).tobytes())
    return h.hexdigest()


def _open_npy(path: Path, shape: Sequence[int], dtype: str) -> np.ndarray:
    """Memory-map ``path`` and check it is exactly the array ``meta.json`` describes."""
    if not path.is_file():
        raise TeacherCacheError(f"teacher cache file {str(path)!r} is missing; delete {str(path.parent)!r} to rebuild it")
    try:
        # Copy-on-write: writable for torch.from_numpy, yet nothing written in memory reaches the file.
        arr = np.load(path, mmap_mode="c", allow_pickle=False)
    except Exception as err:  # truncated header or data: numpy refuses to map it
        raise TeacherCacheError(
            f"teacher cache file {str(path)!r} is damaged or truncated ({type(err).__name__}: {err}); "
            f"delete {str(path.parent)!r} to rebuild it") from None
    if tuple(arr.shape) != tuple(shape) or str(arr.dtype) != dtype:
        raise TeacherCacheError(
            f"teacher cache file {str(path)!r} holds {arr.dtype}{list(arr.shape)} but its meta.json says "
            f"{dtype}{list(shape)}; delete {str(path.parent)!r} to rebuild it")
    expected = arr.offset + arr.nbytes
    size = path.stat().st_size
    if size < expected:
        raise TeacherCacheError(
            f"teacher cache file {str(path)!r} is truncated ({size} bytes, expected {expected}); "
            f"delete {str(path.parent)!r} to rebuild it")
    return arr


class TeacherOutputCache:
    """Stored teacher logits of one data set, row ``i`` = sample ``i``; open with :meth:`open`, make with
    :meth:`build` (or :meth:`get_or_build`). Picklable: the memory maps are reopened in each process."""

    def __init__(self, directory: Union[str, os.PathLike], meta: Dict[str, Any]):
        self.directory = Path(directory)
        self.meta = meta
        self._arrays: Optional[Dict[str, np.ndarray]] = None
        self._tables: Optional[Dict[str, Tensor]] = None

    # ----- properties
    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def top_k(self) -> Optional[int]:
        return self.meta.get("top_k")

    @property
    def fp16(self) -> bool:
        return bool(self.meta.get("fp16"))

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __getstate__(self) -> Dict[str, Any]:
        return {"directory": self.directory, "meta": self.meta, "_arrays": None, "_tables": None}

    def __repr__(self) -> str:
        kind = f"top{self.top_k}" if self.top_k else "full"
        return (f"TeacherOutputCache({str(self.directory)!r}, rows={len(self)}, classes={self.num_classes}, "
                f"{kind}, {'fp16' if self.fp16 else 'fp32'})")

    # ----- reading
    @classmethod
    def open(cls, directory: Union[str, os.PathLike], key: Optional[str] = None, count: Optional[int] = None,
             num_classes: Optional[int] = None, verify: bool = False) -> "TeacherOutputCache":
        """Open and validate a cache; ``key``/``count``/``num_classes`` are checked when given."""
        directory = Path(directory)
        meta_path = directory / META_NAME
        if not meta_path.is_file():
            raise TeacherCacheError(f"no teacher cache at {str(directory)!r} (no {META_NAME}: missing or unfinished)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise TeacherCacheError(f"unreadable {str(meta_path)!r} ({err}); delete {str(directory)!r} to rebuild it") from None
        if meta.get("format") != FORMAT_VERSION:
            raise TeacherCacheError(f"{str(meta_path)!r} has format {meta.get('format')!r}, expected {FORMAT_VERSION}; "
                                    f"delete {str(directory)!r} to rebuild it")
        if key is not None and meta.get("key") != key:
            raise TeacherCacheError(
                f"teacher cache {str(directory)!r} was made for key {meta.get('key')!r}, not {key!r}: the teacher "
                "weights, the data or the transform changed; delete it or use another cache directory")
        if count is not None and int(meta["count"]) != int(count):
            raise TeacherCacheError(
                f"teacher cache {str(directory)!r} has {meta['count']} rows but the dataset has {count} samples")
        if num_classes is not None and int(meta["num_classes"]) != int(num_classes):
            raise TeacherCacheError(
                f"teacher cache {str(directory)!r} stores {meta['num_classes']} classes, expected {num_classes}")
        cache = cls(directory, meta)
        arrays = cache._load_arrays()
        if verify:
            for name, arr in arrays.items():
                if _file_sha(arr) != meta["files"][name]["sha256"]:
                    raise TeacherCacheError(f"teacher cache file {str(directory / name)!r} fails its checksum; "
                                            f"delete {str(directory)!r} to rebuild it")
        return cache

    def _load_arrays(self) -> Dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {name: _open_npy(self.directory / name, f["shape"], f["dtype"])
                            for name, f in self.meta["files"].items()}
        return self._arrays

    def _load_tables(self) -> Dict[str, Tensor]:
        """The memory maps as tensors (no copy), so a batch is one torch gather instead of numpy's
        fancy indexing plus conversions: this runs on every training step."""
        if self._tables is None:
            self._tables = {name: torch.from_numpy(arr) for name, arr in self._load_arrays().items()}
        return self._tables

    def rows(self, index: Union[Tensor, np.ndarray, Sequence[int], int]) -> Tensor:
        """Float32 teacher logits of the samples ``index`` (an int or a 1-D sequence), in that order."""
        idx = index if isinstance(index, Tensor) else torch.as_tensor(np.asarray(index, dtype=np.int64))
        if idx.dtype != torch.long or idx.device.type != "cpu":
            idx = idx.to("cpu", torch.long)
        scalar = idx.ndim == 0
        idx = idx.reshape(-1)
        tables = self._load_tables()
        try:
            if self.top_k:
                out = reconstruct_topk(tables["topk_logprobs.npy"][idx], tables["topk_indices.npy"][idx],
                                       self.num_classes)
            else:
                out = tables["logits.npy"][idx].float()
        except IndexError:
            raise IndexError(f"sample index out of range for a teacher cache of {len(self)} rows") from None
        return out[0] if scalar else out

    # ----- writing
    @classmethod
    @torch.inference_mode()
    def build(cls, teacher: nn.Module, dataset: Dataset, directory: Union[str, os.PathLike], key: str = "",
              fp16: bool = False, top_k: Optional[int] = None, batch_size: int = 256,
              collate_fn: Optional[Callable] = None, device: Union[str, torch.device, None] = None,
              input_key: Optional[str] = None, extra_meta: Optional[Dict[str, Any]] = None) -> "TeacherOutputCache":
        """Run ``teacher`` over ``dataset`` in order and write the cache atomically into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("cannot cache teacher outputs of an empty dataset")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        first_param = next(iter(teacher.parameters()), None)
        home = first_param.device if first_param is not None else torch.device("cpu")
        was_training = teacher.training
        teacher.eval().to(device)
        # Its own generator: building a cache leaves the global RNG (and so the training run) untouched.
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn or default_collate,
                            generator=torch.Generator())
        writers: Dict[str, np.ndarray] = {}
        tmp_paths: Dict[str, str] = {}
        row = 0
        try:
            for batch in loader:
                x = unpack(batch, input_key).x
                x = x.to(device) if isinstance(x, Tensor) else x
                logits = teacher(x).float()
                if logits.ndim != 2:
                    raise ValueError(f"the teacher must return logits [batch, classes]; got {tuple(logits.shape)}")
                if not torch.isfinite(logits).all():
                    raise ValueError("the teacher produced non-finite logits; refusing to cache them")
                b, c = logits.shape
                if top_k is not None:
                    k = min(int(top_k), c)
                    values, indices = topk_logprobs(logits, k)
                    index_dtype = np.int16 if c <= np.iinfo(np.int16).max else np.int32
                    chunks = {"topk_logprobs.npy": values.cpu().numpy().astype(np.float16 if fp16 else np.float32),
                              "topk_indices.npy": indices.cpu().numpy().astype(index_dtype)}
                else:
                    if fp16 and float(logits.abs().max()) > _FP16_MAX:
                        raise ValueError("teacher logits exceed the float16 range; cache them with fp16=False")
                    chunks = {"logits.npy": logits.cpu().numpy().astype(np.float16 if fp16 else np.float32)}
                if not writers:
                    for name, chunk in chunks.items():
                        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
                        os.close(fd)
                        tmp_paths[name] = tmp
                        writers[name] = np.lib.format.open_memmap(tmp, mode="w+", dtype=chunk.dtype,
                                                                  shape=(n,) + chunk.shape[1:])
                    num_classes = c
                elif c != num_classes:
                    raise ValueError(f"the teacher's output width changed from {num_classes} to {c} within the dataset")
                if row + b > n:
                    raise ValueError(f"the data loader yielded more than len(dataset)={n} samples")
                for name, chunk in chunks.items():
                    writers[name][row:row + b] = chunk
                row += b
            if row != n:
                raise ValueError(f"the data loader yielded {row} samples, but len(dataset)={n}")
            files = {}
            for name, arr in writers.items():
                arr.flush()
                files[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": _file_sha(arr)}
            del arr
            writers.clear()
            for name, tmp in tmp_paths.items():
                os.replace(tmp, directory / name)
            tmp_paths.clear()
            meta = {"format": FORMAT_VERSION, "key": key, "count": n, "num_classes": num_classes,
                    "fp16": bool(fp16), "top_k": min(int(top_k), num_classes) if top_k else None,
                    "files": files, **(extra_meta or {})}
            kd_io.write_json(directory / META_NAME, meta)  # last: marks the cache complete
        finally:
            writers.clear()
            for tmp in tmp_paths.values():
                if os.path.exists(tmp):
                    os.unlink(tmp)
            teacher.to(home).train(was_training)
        return cls.open(directory, key=key, count=n)

    @classmethod
    def get_or_build(cls, teacher: nn.Module, dataset: Dataset, root: Union[str, os.PathLike],
                     data_config: Any = None, transform: Any = "auto", fp16: bool = False,
                     top_k: Optional[int] = None, allow_random_transform: bool = False, verify: bool = False,
                     name: str = "", **build_kwargs: Any) -> "TeacherOutputCache":
        """Open the cache for this (teacher, dataset, config, transform, options) under ``root``, or build it.

        ``transform="auto"`` reads it from the dataset (``dataset.transform`` etc.). ``name`` (e.g. the
        split) becomes a prefix of the directory name, for humans.
        """
        if _is_auto(transform):
            transform = dataset_transform(dataset)
        check_transform(dataset, allow_random_transform, transform=transform)
        key = cache_key(teacher, dataset, data_config, transform, fp16, top_k)
        directory = Path(root) / (f"{name}-{key}" if name else key)
        n = len(dataset)  # type: ignore[arg-type]
        if (directory / META_NAME).is_file():
            return cls.open(directory, key=key, count=n, verify=verify)
        return cls.build(teacher, dataset, directory, key=key, fp16=fp16, top_k=top_k,
                         extra_meta={"name": name, "transform": repr(transform)}, **build_kwargs)


# ---------------------------------------------------------------------------------- the dataset
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


class CachedLogitsDataset(Dataset):
    """``dataset`` plus its teacher logits: item ``i`` is ``{"input", "target", "index": i, "teacher_logits"}``.

    Dict samples of the base dataset keep their keys (and ``labeled``); tuple samples ``(x, y[, i])``
    become ``input``/``target``. Batched reads (``__getitems__``, one memory-map gather per batch) are
    used by the loaders of :class:`CachedTeacherDataModule`, which pass ``collate_fn=passthrough``.
    """

    def __init__(self, dataset: Dataset, cache: TeacherOutputCache, collate_fn: Optional[Callable] = None,
                 input_key: Optional[str] = None, target_key: Optional[str] = None):
        if len(dataset) != len(cache):  # type: ignore[arg-type]
            raise TeacherCacheError(f"the dataset has {len(dataset)} samples but the teacher cache has "  # type: ignore[arg-type]
                                    f"{len(cache)} rows ({cache!r})")
        self.dataset, self.cache = dataset, cache
        self.collate_fn = collate_fn or default_collate
        self.input_key, self.target_key = input_key, target_key

    def __len__(self) -> int:
        return len(self.cache)

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
        return self._as_dict(self.dataset[i], i, self.cache.rows(i))


class _BatchedCachedLogitsDataset(CachedLogitsDataset):
    """Same samples, fetched a batch at a time; only for loaders with ``collate_fn=_passthrough``."""

    def __getitems__(self, indices: List[int]) -> Dict[str, Any]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self._as_dict(_fetch_base(self.dataset, idx, self.collate_fn), idx, self.cache.rows(idx))


# ------------------------------------------------------------------------------ the data module
def _loader_settings(loader: DataLoader) -> Dict[str, Any]:
    return {"batch_size": loader.batch_size, "num_workers": loader.num_workers, "pin_memory": loader.pin_memory,
            "drop_last": loader.drop_last, "persistent_workers": loader.persistent_workers,
            "shuffle": isinstance(loader.sampler, RandomSampler)}


class CachedTeacherDataModule(L.LightningDataModule):
    """Wraps ``datamodule`` so its train/val/test batches carry cached ``teacher_logits``.

    The caches are built (or reused) in :meth:`prepare_caches`, called by :meth:`setup` or earlier by the
    application so DDP workers only read. Loader settings (batch size, workers, shuffling) come from the
    wrapped module's loaders. Use it with ``DistillationModule(student, teacher=None, loss=...)``.
    """

    def __init__(self, datamodule: L.LightningDataModule, teacher: nn.Module, root: Union[str, os.PathLike],
                 data_config: Any = None, fp16: bool = False, top_k: Optional[int] = None,
                 allow_random_transform: bool = False, splits: Iterable[str] = ("train", "val", "test"),
                 device: Union[str, torch.device, None] = None, verify: bool = False, batch_size: int = 512):
        super().__init__()
        self.datamodule = datamodule
        self.teacher = teacher
        self.root = Path(root)
        self.data_config = data_config
        self.fp16, self.top_k = fp16, top_k
        self.allow_random_transform = allow_random_transform
        self.splits = tuple(splits)
        self.device, self.verify, self.build_batch_size = device, verify, batch_size
        self.caches: Dict[str, TeacherOutputCache] = {}
        self._settings: Dict[str, Dict[str, Any]] = {}
        self._datasets: Dict[str, Dataset] = {}
        self._collate: Dict[str, Callable] = {}

    def __getattr__(self, name: str) -> Any:  # num_classes, num_train, ... of the wrapped module
        inner = self.__dict__.get("datamodule")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def _loader(self, split: str) -> Optional[DataLoader]:
        fn = getattr(self.datamodule, f"{split}_dataloader", None)
        try:
            return fn() if fn is not None else None
        except NotImplementedError:
            return None

    def prepare_caches(self) -> Dict[str, TeacherOutputCache]:
        if self.caches:
            return self.caches
        self.datamodule.setup("fit")
        if "test" in self.splits:
            self.datamodule.setup("test")
        for split in self.splits:
            loader = self._loader(split)
            if loader is None:
                continue
            if not isinstance(loader, DataLoader):
                raise TypeError(f"{split}_dataloader() must return one DataLoader to be cached, got {type(loader).__name__}")
            ds = loader.dataset
            transform = dataset_transform(ds)
            if split == "train":  # eval transforms are deterministic in practice
                check_transform(ds, self.allow_random_transform, transform=transform)
            collate = loader.collate_fn or default_collate
            self.caches[split] = TeacherOutputCache.get_or_build(
                self.teacher, ds, self.root, data_config=self.data_config, transform=transform, fp16=self.fp16,
                top_k=self.top_k, allow_random_transform=True, verify=self.verify, name=split,
                collate_fn=collate, device=self.device, batch_size=self.build_batch_size)
            self._settings[split] = _loader_settings(loader)
            self._datasets[split] = ds
            self._collate[split] = collate
        return self.caches

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: Optional[str] = None) -> None:
        self.datamodule.setup(stage)
        self.prepare_caches()

    def cached_dataloader(self, split: str) -> DataLoader:
        self.prepare_caches()
        if split not in self.caches:
            loader = self._loader(split)
            if loader is None:
                raise ValueError(f"the wrapped data module has no {split} loader")
            return loader
        s = dict(self._settings[split])
        shuffle = s.pop("shuffle")
        ds = _BatchedCachedLogitsDataset(self._datasets[split], self.caches[split], self._collate[split])
        return DataLoader(ds, shuffle=shuffle, collate_fn=_passthrough, **s)

    def train_dataloader(self) -> DataLoader:
        return self.cached_dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.cached_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.cached_dataloader("test")

    def predict_dataloader(self) -> Any:
        return self.datamodule.predict_dataloader()

    def teardown(self, stage: Optional[str] = None) -> None:
        self.datamodule.teardown(stage)
