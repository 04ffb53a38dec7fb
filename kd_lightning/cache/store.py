"""The one on-disk store of teacher outputs, for both model families.

A store directory holds ``.npy`` arrays and a ``meta.json`` that is written last (shape, dtype and
SHA-256 of every array, the key of everything that shaped it, its kind). :class:`OutputStore` owns what
every kind shares: reading and checking ``meta.json``, memory-mapping the arrays with their shape and
dtype checked, the digest check on open, the atomic commit (arrays moved into place, then ``meta.json``),
and :meth:`OutputStore.open_or_build` — open and check under a lock, or (re)build — so two processes
sharing a directory build it once. :class:`TeacherOutputs` holds a classifier data set's dense or top-k
logits (one row per sample); :class:`~kd_lightning.cache.tokens.TokenTeacherOutputs` a tokenized data
set's per-token top-k distributions.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from .. import io as kd_io
from ..batch import unpack
from .fingerprint import FORMAT_VERSION, outputs_key, sha256
from .topk import reconstruct_topk, topk_logprobs
from .transforms import is_auto, check_transform, dataset_transform

log = logging.getLogger(__name__)
META_NAME = "meta.json"
_FP16_MAX = float(np.finfo(np.float16).max)


class TeacherOutputsError(RuntimeError):
    """Stored teacher outputs that cannot be trusted (wrong key, shape, dtype, truncated file, bad checksum)."""


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
        raise TeacherOutputsError(f"stored teacher outputs file {str(path)!r} is missing; delete {str(path.parent)!r} "
                                  "to rebuild it")
    try:
        # Copy-on-write: writable for torch.from_numpy, yet nothing written in memory reaches the file.
        arr = np.load(path, mmap_mode="c", allow_pickle=False)
    except Exception as err:  # truncated header or data: numpy refuses to map it
        raise TeacherOutputsError(
            f"stored teacher outputs file {str(path)!r} is damaged or truncated ({type(err).__name__}: {err}); "
            f"delete {str(path.parent)!r} to rebuild it") from None
    if tuple(arr.shape) != tuple(shape) or str(arr.dtype) != dtype:
        raise TeacherOutputsError(
            f"stored teacher outputs file {str(path)!r} holds {arr.dtype}{list(arr.shape)} but its meta.json says "
            f"{dtype}{list(shape)}; delete {str(path.parent)!r} to rebuild it")
    expected = arr.offset + arr.nbytes
    size = path.stat().st_size
    if size < expected:
        raise TeacherOutputsError(
            f"stored teacher outputs file {str(path)!r} is truncated ({size} bytes, expected {expected}); "
            f"delete {str(path.parent)!r} to rebuild it")
    return arr


class OutputStore:
    """One directory of stored teacher outputs (see the module docstring); subclasses say what the arrays mean.

    Picklable: the memory maps are reopened in each process.
    """

    #: ``meta["kind"]`` of this store's directories.
    kind: str = ""
    #: The keys of ``meta.json`` that reading the store needs.
    meta_keys: Tuple[str, ...] = ("count", "files")

    def __init__(self, directory: Union[str, os.PathLike], meta: Dict[str, Any]):
        self.directory = Path(directory)
        self.meta = meta
        self.mapped: Optional[Dict[str, np.ndarray]] = None
        self.tensors: Optional[Dict[str, Tensor]] = None

    @property
    def key(self) -> str:
        return self.meta["key"]

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __getstate__(self) -> Dict[str, Any]:
        return {"directory": self.directory, "meta": self.meta, "mapped": None, "tensors": None}

    @classmethod
    def read_meta(cls, directory: Union[str, os.PathLike]) -> Dict[str, Any]:
        """``meta.json`` of ``directory``, checked for this store's format and kind."""
        directory = Path(directory)
        meta_path = directory / META_NAME
        if not meta_path.is_file():
            raise TeacherOutputsError(f"no stored teacher outputs at {str(directory)!r} (no {META_NAME}: missing or "
                                      "unfinished)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise TeacherOutputsError(f"unreadable {str(meta_path)!r} ({err}); delete {str(directory)!r} to rebuild "
                                      "it") from None
        if not isinstance(meta, dict):  # valid JSON, yet not the record this store writes
            raise TeacherOutputsError(f"{str(meta_path)!r} holds a JSON {type(meta).__name__}, not a record of stored "
                                      f"teacher outputs; delete {str(directory)!r} to rebuild it")
        if meta.get("format") != FORMAT_VERSION or meta.get("kind", "") != cls.kind:
            raise TeacherOutputsError(
                f"{str(meta_path)!r} holds format {meta.get('format')!r} of kind {meta.get('kind', '')!r}, expected "
                f"format {FORMAT_VERSION} of kind {cls.kind!r}; delete {str(directory)!r} to rebuild it")
        files = meta.get("files")
        missing = [k for k in cls.meta_keys if k not in meta]
        if missing or not isinstance(files, dict) or not all(
                isinstance(f, dict) and {"shape", "dtype"} <= set(f) for f in files.values()):
            what = f"has no {', '.join(missing)}" if missing else "describes its arrays wrongly"
            raise TeacherOutputsError(f"{str(meta_path)!r} {what} (an edited or damaged record); delete "
                                      f"{str(directory)!r} to rebuild it")
        return meta

    def arrays(self) -> Dict[str, np.ndarray]:
        """Every array, memory-mapped, its shape and dtype checked against ``meta.json``."""
        if self.mapped is None:
            self.mapped = {name: open_npy(self.directory / name, f["shape"], f["dtype"])
                           for name, f in self.meta["files"].items()}
        return self.mapped

    def tables(self) -> Dict[str, Tensor]:
        """The memory maps as tensors (no copy), so a batch is one torch gather instead of numpy's
        fancy indexing plus conversions: this runs on every training step."""
        if self.tensors is None:
            self.tensors = {name: torch.from_numpy(arr) for name, arr in self.arrays().items()}
        return self.tensors

    def verify(self) -> None:
        """Check every array against the SHA-256 recorded in ``meta.json`` (raises :class:`TeacherOutputsError`)."""
        t0 = time.perf_counter()
        for name, arr in self.arrays().items():
            expected = self.meta["files"][name].get("sha256")
            if not expected:
                raise TeacherOutputsError(f"{str(self.directory / META_NAME)!r} records no checksum for {name}; "
                                          f"delete {str(self.directory)!r} to rebuild it")
            if array_sha256(arr) != expected:
                raise TeacherOutputsError(
                    f"stored teacher outputs file {str(self.directory / name)!r} fails its checksum (its content "
                    f"changed after it was written); delete {str(self.directory)!r} to rebuild it")
        log.debug("verified %r in %.3fs", self, time.perf_counter() - t0)

    @staticmethod
    def file_entry(arr: np.ndarray) -> Dict[str, Any]:
        return {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": array_sha256(arr)}

    @classmethod
    def commit(cls, directory: Path, written: Dict[str, Union[str, os.PathLike]], meta: Dict[str, Any]) -> None:
        """Move the finished temporary files ``written`` (name -> path) into ``directory``, then write
        ``meta.json`` (with this store's format and kind): a directory without it is an unfinished write."""
        (directory / META_NAME).unlink(missing_ok=True)  # a rebuild is unfinished until its meta.json lands
        for name, tmp in written.items():
            kd_io.fsync(Path(tmp))
            os.replace(tmp, directory / name)
        kd_io.write_json(directory / META_NAME, {"format": FORMAT_VERSION, "kind": cls.kind, **meta})

    @classmethod
    def open_or_build(cls, directory: Path, open_fn: Callable[[], "OutputStore"], build_fn: Callable[[], "OutputStore"],
                      rebuild_damaged: bool = True) -> "OutputStore":
        """Under a lock on ``directory``: open and check it with ``open_fn``, or build it with ``build_fn`` when it
        is absent or, with ``rebuild_damaged``, fails a check (a warning names the file)."""
        directory.parent.mkdir(parents=True, exist_ok=True)
        with kd_io.locked(directory.parent / f".{directory.name}.lock"):
            if (directory / META_NAME).is_file():
                try:
                    return open_fn()
                except TeacherOutputsError as err:
                    if not rebuild_damaged:
                        raise
                    log.warning("rebuilding damaged stored teacher outputs: %s", err)
            return build_fn()


class TeacherOutputs(OutputStore):
    """Stored teacher logits of one classifier data set, row ``i`` = sample ``i`` (full or top-k storage);
    open with :meth:`open`, make with :meth:`build` (or :meth:`get_or_build`)."""

    kind = "logits"
    meta_keys = ("count", "files", "num_classes")

    # ----- properties
    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def top_k(self) -> Optional[int]:
        return self.meta.get("top_k")

    @property
    def fp16(self) -> bool:
        return bool(self.meta.get("fp16"))

    def __repr__(self) -> str:
        kind = f"top{self.top_k}" if self.top_k else "full"
        return (f"TeacherOutputs({str(self.directory)!r}, rows={len(self)}, classes={self.num_classes}, "
                f"{kind}, {'fp16' if self.fp16 else 'fp32'})")

    # ----- reading
    @classmethod
    def open(cls, directory: Union[str, os.PathLike], key: Optional[str] = None, count: Optional[int] = None,
             num_classes: Optional[int] = None, verify: bool = True) -> "TeacherOutputs":
        """Open and validate stored outputs; ``key``/``count``/``num_classes`` are checked when given.

        ``verify`` (default) compares every array's SHA-256 with the one ``meta.json`` recorded when the
        outputs were stored, so a file changed in place (bit flips, an edited row) is an error naming it,
        never silently wrong targets. It is one sequential read (about 1 GB/s on one core: ~13 ms for
        CIFAR-100's 50k x 100 fp32 logits, ~2.5 s for ImageNet's 1.28M x 1000 fp16); pass ``verify=False``
        to skip it.
        """
        directory = Path(directory)
        meta = cls.read_meta(directory)
        if key is not None and meta.get("key") != key:
            raise TeacherOutputsError(
                f"stored teacher outputs {str(directory)!r} were made for key {meta.get('key')!r}, not {key!r}: the "
                "teacher weights, the data or the transform changed; delete them or use another directory")
        if count is not None and int(meta["count"]) != int(count):
            raise TeacherOutputsError(
                f"stored teacher outputs {str(directory)!r} have {meta['count']} rows but the dataset has {count} "
                "samples")
        if num_classes is not None and int(meta["num_classes"]) != int(num_classes):
            raise TeacherOutputsError(
                f"stored teacher outputs {str(directory)!r} hold {meta['num_classes']} classes, expected {num_classes}")
        outputs = cls(directory, meta)
        outputs.arrays()  # maps every file and checks its shape and dtype against meta.json
        if verify:
            outputs.verify()
        return outputs

    def rows(self, index: Union[Tensor, np.ndarray, Sequence[int], int]) -> Tensor:
        """Float32 teacher logits of the samples ``index`` (an int or a 1-D sequence), in that order."""
        idx = index if isinstance(index, Tensor) else torch.as_tensor(np.asarray(index, dtype=np.int64))
        if idx.dtype != torch.long or idx.device.type != "cpu":
            idx = idx.to("cpu", torch.long)
        scalar = idx.ndim == 0
        idx = idx.reshape(-1)
        tables = self.tables()
        try:
            if self.top_k:
                out = reconstruct_topk(tables["topk_logprobs.npy"][idx], tables["topk_indices.npy"][idx],
                                       self.num_classes)
            else:
                out = tables["logits.npy"][idx].float()
        except IndexError:
            raise IndexError(f"sample index out of range for stored teacher outputs of {len(self)} rows") from None
        return out[0] if scalar else out

    # ----- writing
    @classmethod
    @torch.inference_mode()
    def build(cls, teacher: nn.Module, dataset: Dataset, directory: Union[str, os.PathLike], key: str = "",
              fp16: bool = False, top_k: Optional[int] = None, batch_size: int = 256,
              collate_fn: Optional[Callable] = None, device: Union[str, torch.device, None] = None,
              input_key: Optional[str] = None, extra_meta: Optional[Dict[str, Any]] = None) -> "TeacherOutputs":
        """Run ``teacher`` over ``dataset`` in order and store the outputs atomically in ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("cannot store teacher outputs of an empty dataset")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        first_param = next(iter(teacher.parameters()), None)
        home = first_param.device if first_param is not None else torch.device("cpu")
        was_training = teacher.training
        teacher.eval().to(device)
        # Its own generator: building leaves the global RNG (and so the training run) untouched.
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
                    raise ValueError("the teacher produced non-finite logits; refusing to store them")
                b, c = logits.shape
                if top_k is not None:
                    k = min(int(top_k), c)
                    values, indices = topk_logprobs(logits, k)
                    index_dtype = np.int16 if c <= np.iinfo(np.int16).max else np.int32
                    chunks = {"topk_logprobs.npy": values.cpu().numpy().astype(np.float16 if fp16 else np.float32),
                              "topk_indices.npy": indices.cpu().numpy().astype(index_dtype)}
                else:
                    if fp16 and float(logits.abs().max()) > _FP16_MAX:
                        raise ValueError("teacher logits exceed the float16 range; store them with fp16=False")
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
                files[name] = cls.file_entry(arr)
            del arr
            writers.clear()
            cls.commit(directory, tmp_paths, {
                "key": key, "count": n, "num_classes": num_classes, "fp16": bool(fp16),
                "top_k": min(int(top_k), num_classes) if top_k else None, "files": files, **(extra_meta or {})})
            tmp_paths.clear()
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
                     name: str = "", rebuild_damaged: bool = True, **build_kwargs: Any) -> "TeacherOutputs":
        """Open the stored outputs for this (teacher, dataset, config, transform, options) under ``root``, or
        build them (under a lock: concurrent runs build once).

        ``transform="auto"`` reads it from the dataset (``dataset.transform`` etc.). ``name`` (e.g. the
        split) becomes a prefix of the directory name, for humans. A directory that fails its checks when
        opened (checksum, truncation, shape, unreadable meta.json) is rebuilt with a warning naming the
        file, or, with ``rebuild_damaged=False``, is an error.
        """
        if is_auto(transform):
            transform = dataset_transform(dataset)
        check_transform(dataset, allow_random_transform, transform=transform)
        key = outputs_key(teacher, dataset, data_config, transform, fp16, top_k)
        directory = Path(root) / (f"{name}-{key}" if name else key)
        n = len(dataset)  # type: ignore[arg-type]
        return cls.open_or_build(  # type: ignore[return-value]
            directory, lambda: cls.open(directory, key=key, count=n, verify=verify),
            lambda: cls.build(teacher, dataset, directory, key=key, fp16=fp16, top_k=top_k,
                              extra_meta={"name": name, "transform": repr(transform)}, **build_kwargs),
            rebuild_damaged)

