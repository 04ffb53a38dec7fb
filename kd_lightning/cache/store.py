"""The on-disk store: one data set's teacher outputs in memory-mapped ``.npy`` files plus ``meta.json``."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from .. import io as kd_io
from ..batch import unpack
from .fingerprint import FORMAT_VERSION, cache_key, sha256
from .topk import reconstruct_topk, topk_logprobs
from .transforms import is_auto, check_transform, dataset_transform

log = logging.getLogger(__name__)
META_NAME = "meta.json"
_FP16_MAX = float(np.finfo(np.float16).max)


class TeacherCacheError(RuntimeError):
    """A teacher cache that cannot be trusted (wrong key, shape, dtype, truncated file, bad checksum)."""



def array_sha256(arr: np.ndarray) -> str:
    """SHA-256 of the array's data bytes (not the .npy header: shape and dtype are checked apart)."""
    h = sha256()
    flat = arr.reshape(-1)
    step = max(1, (64 << 20) // max(1, arr.itemsize))
    for start in range(0, flat.shape[0], step):
        h.update(np.ascontiguousarray(flat[start:start + step]).view(np.uint8))  # no copy for a memory map
    return h.hexdigest()


def open_npy(path: Path, shape: Sequence[int], dtype: str) -> np.ndarray:
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
             num_classes: Optional[int] = None, verify: bool = True) -> "TeacherOutputCache":
        """Open and validate a cache; ``key``/``count``/``num_classes`` are checked when given.

        ``verify`` (default) compares every array's SHA-256 with the one ``meta.json`` recorded when the
        cache was built, so a file changed in place (bit flips, an edited row) is an error naming it,
        never silently wrong targets. It is one sequential read of the cache (about 1 GB/s on one core:
        ~13 ms for CIFAR-100's 50k x 100 fp32 logits, ~2.5 s for ImageNet's 1.28M x 1000 fp16); pass
        ``verify=False`` to skip it.
        """
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
        cache._load_arrays()  # maps every file and checks its shape and dtype against meta.json
        if verify:
            cache.verify()
        return cache

    def verify(self) -> None:
        """Check every array against the SHA-256 recorded in ``meta.json`` (raises :class:`TeacherCacheError`)."""
        t0 = time.perf_counter()
        for name, arr in self._load_arrays().items():
            expected = self.meta["files"][name].get("sha256")
            if not expected:
                raise TeacherCacheError(f"{str(self.directory / META_NAME)!r} records no checksum for {name}; "
                                        f"delete {str(self.directory)!r} to rebuild it")
            if array_sha256(arr) != expected:
                raise TeacherCacheError(
                    f"teacher cache file {str(self.directory / name)!r} fails its checksum (its content changed "
                    f"after it was written); delete {str(self.directory)!r} to rebuild it")
        log.debug("verified %r in %.3fs", self, time.perf_counter() - t0)

    def _load_arrays(self) -> Dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {name: open_npy(self.directory / name, f["shape"], f["dtype"])
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
                        tmp = str(kd_io.temp_path_beside(directory / name))
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
                files[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": array_sha256(arr)}
            del arr
            writers.clear()
            (directory / META_NAME).unlink(missing_ok=True)  # a rebuild is unfinished until its meta.json lands
            for name, tmp in tmp_paths.items():
                kd_io.fsync(Path(tmp))
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
        return cls.open(directory, key=key, count=n, verify=False)  # its checksums were just computed

    @classmethod
    def get_or_build(cls, teacher: nn.Module, dataset: Dataset, root: Union[str, os.PathLike],
                     data_config: Any = None, transform: Any = "auto", fp16: bool = False,
                     top_k: Optional[int] = None, allow_random_transform: bool = False, verify: bool = True,
                     name: str = "", rebuild_damaged: bool = True, **build_kwargs: Any) -> "TeacherOutputCache":
        """Open the cache for this (teacher, dataset, config, transform, options) under ``root``, or build it.

        ``transform="auto"`` reads it from the dataset (``dataset.transform`` etc.). ``name`` (e.g. the
        split) becomes a prefix of the directory name, for humans. A cache that fails its checks when
        opened (checksum, truncation, shape, unreadable meta.json) is rebuilt with a warning naming the
        file, or, with ``rebuild_damaged=False``, is an error.
        """
        if is_auto(transform):
            transform = dataset_transform(dataset)
        check_transform(dataset, allow_random_transform, transform=transform)
        key = cache_key(teacher, dataset, data_config, transform, fp16, top_k)
        directory = Path(root) / (f"{name}-{key}" if name else key)
        n = len(dataset)  # type: ignore[arg-type]
        if (directory / META_NAME).is_file():
            try:
                return cls.open(directory, key=key, count=n, verify=verify)
            except TeacherCacheError as err:
                if not rebuild_damaged:
                    raise
                log.warning("rebuilding a damaged teacher cache: %s", err)
        return cls.build(teacher, dataset, directory, key=key, fp16=fp16, top_k=top_k,
                         extra_meta={"name": name, "transform": repr(transform)}, **build_kwargs)

