"""Stored teacher outputs for language models: per token, the teacher's top-k next-token distribution.

Run the teacher once over a tokenized training set and keep, for every position of every sequence,

* ``topk_ids.npy``      ``[tokens, k]`` int32 — the ``k`` most likely next-token ids,
* ``topk_logprobs.npy`` ``[tokens, k]`` fp16  — their log-probabilities ``log_softmax(z_t / T)``,
* ``rest_mass.npy``     ``[tokens]``    fp32  — the probability left outside them, ``1 − Σ_k p_i``
  (computed in fp32 before the rounding to fp16, so the tail bucket of
  :func:`~kd_lightning.losses.functional.token_divergence_topk` stays exact),
* ``offsets.npy``       ``[rows + 1]``  int64 — where each sequence's tokens start (sequences may differ
  in length: only the positions inside a sequence's attention mask are stored),

so storage is ``6k + 4`` bytes per token (52 at k = 8, 772 at k = 128) instead of ``4·V`` for dense fp32
logits (8,192 for a 2,048-token vocabulary). ``meta.json`` is written last and records the temperature
the log-probabilities were taken at, ``k``, the vocabulary size, the SHA-256 of the teacher's weights
and of the tokenizer's definition, the data's fingerprint and the SHA-256 of every array. Opening a
store checks all of them: outputs made by another teacher or another tokenizer, at another temperature
or ``k``, or whose bytes changed since they were written, are refused with a :class:`TeacherOutputsError`
naming what differs — never used. :meth:`TokenTeacherOutputs.get_or_build` keys its directory by all of them,
builds it under a lock and rebuilds a damaged one with a warning naming the file (the store is
:class:`~kd_lightning.cache.store.OutputStore`, shared with the classifier's stored logits).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from .. import io as kd_io
from ..data.wrapper import WrappedDataModule
from ..exact_resume import sampler_like
from ..forward import call_signature, lm_logits
from .fingerprint import FORMAT_VERSION, fingerprint_dataset, fingerprint_module, fingerprint_tokenizer
from .store import OutputStore, TeacherOutputsError

KIND = "token_topk"
FILES = ("topk_ids.npy", "topk_logprobs.npy", "rest_mass.npy", "offsets.npy")


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _lengths(mask: Tensor) -> Tensor:
    """Tokens per row of a right-padded attention mask (ones, then zeros); anything else is refused."""
    lengths = mask.sum(-1)
    positions = torch.arange(mask.shape[-1], device=mask.device)
    if not torch.equal(mask.bool(), positions < lengths.unsqueeze(-1)):
        raise ValueError("stored token teacher outputs need right-padded sequences (attention_mask of ones, then zeros); "
                         "this data set pads on the left or has holes in its masks")
    return lengths


class TokenTeacherOutputs(OutputStore):
    """Stored top-k teacher distributions of one tokenized data set; row ``i`` = sequence ``i``."""

    kind = KIND
    meta_keys = ("count", "files", "tokens", "top_k", "temperature", "vocab_size")

    @property
    def top_k(self) -> int:
        return int(self.meta["top_k"])

    @property
    def temperature(self) -> float:
        return float(self.meta["temperature"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def num_tokens(self) -> int:
        return int(self.meta["tokens"])

    def nbytes(self) -> int:
        """Bytes of the stored arrays on disk (headers included)."""
        return sum((self.directory / name).stat().st_size for name in FILES)

    def bytes_per_token(self) -> float:
        return self.nbytes() / max(1, self.num_tokens)

    def __repr__(self) -> str:
        return (f"TokenTeacherOutputs({str(self.directory)!r}, rows={len(self)}, tokens={self.num_tokens}, k={self.top_k}, "
                f"T={self.temperature}, {self.bytes_per_token():.0f} B/token)")

    # ------------------------------------------------------------------------------------ reading
    @classmethod
    def open(cls, directory: Union[str, os.PathLike], *, teacher: Union[nn.Module, str, None] = None,
             tokenizer: Any = None, temperature: Optional[float] = None, top_k: Optional[int] = None,
             count: Optional[int] = None, key: Optional[str] = None, verify: bool = True) -> "TokenTeacherOutputs":
        """Open stored outputs and check them against what the caller will use it with.

        ``teacher`` (a module or its :func:`fingerprint_module`) and ``tokenizer`` (a tokenizer or its
        :func:`fingerprint_tokenizer`), ``temperature``, ``top_k``, ``count`` and ``key`` are compared with
        what they were built from when given; ``verify`` checks every array's SHA-256 (one read).
        """
        directory = Path(directory)
        meta = cls.read_meta(directory)
        fix = f"delete {str(directory)!r} or store the teacher outputs for this setting"
        checks = []
        if teacher is not None:
            want = teacher if isinstance(teacher, str) else fingerprint_module(teacher)
            checks.append(("teacher", meta.get("teacher_sha256"), want,
                           "it was made by another teacher (its weights differ)"))
        if tokenizer is not None:
            want = tokenizer if isinstance(tokenizer, str) else fingerprint_tokenizer(tokenizer)
            checks.append(("tokenizer", meta.get("tokenizer_sha256"), want,
                           "it was made with another tokenizer, so its token ids mean other strings"))
        if temperature is not None:
            checks.append(("temperature", float(meta.get("temperature", float("nan"))), float(temperature),
                           f"its log-probabilities were taken at T={meta.get('temperature')}, not T={temperature}"))
        if top_k is not None:
            checks.append(("top_k", meta.get("top_k"), int(top_k), f"it keeps k={meta.get('top_k')}, not {top_k}"))
        if count is not None:
            checks.append(("count", meta.get("count"), int(count),
                           f"it holds {meta.get('count')} sequences but the data set has {count}"))
        if key is not None:
            checks.append(("key", meta.get("key"), key, "the teacher, tokenizer, data or options changed"))
        for _, have, want, why in checks:
            if have != want:
                raise TeacherOutputsError(f"stored teacher outputs {str(directory)!r} cannot be used: {why}; {fix}")
        outputs = cls(directory, meta)
        if sorted(meta["files"]) != sorted(FILES):
            raise TeacherOutputsError(f"stored teacher outputs {str(directory)!r} list {sorted(meta['files'])}, "
                                      f"expected {list(FILES)}; {fix}")
        if verify:
            outputs.verify()
        offsets = outputs.tables()["offsets.npy"]
        if offsets.shape[0] != len(outputs) + 1 or int(offsets[-1]) != outputs.num_tokens:
            raise TeacherOutputsError(f"stored teacher outputs file {str(directory / 'offsets.npy')!r} does not match "
                                      f"its meta.json; {fix}")
        return outputs

    def sequence(self, i: int) -> Tuple[Tensor, Tensor, Tensor]:
        """``(ids int32 [n, k], logprobs float32 [n, k], rest float32 [n])`` of sequence ``i``'s ``n`` tokens."""
        t = self.tables()
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} is out of range for stored teacher outputs of {len(self)} sequences")
        a, b = int(t["offsets.npy"][i]), int(t["offsets.npy"][i + 1])
        return t["topk_ids.npy"][a:b], t["topk_logprobs.npy"][a:b].float(), t["rest_mass.npy"][a:b]

    # ------------------------------------------------------------------------------------ writing
    @classmethod
    @torch.inference_mode()
    def build(cls, teacher: nn.Module, dataset: Dataset, directory: Union[str, os.PathLike], *, tokenizer: Any,
              top_k: int, temperature: float = 1.0, batch_size: int = 16, collate_fn: Optional[Callable] = None,
              device: Union[str, torch.device, None] = None, key: str = "",
              extra_meta: Optional[Dict[str, Any]] = None) -> "TokenTeacherOutputs":
        """Run ``teacher`` over ``dataset`` (dict samples with ``input_ids`` and ``attention_mask``) in order
        and store the outputs atomically in ``directory``."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k={top_k!r} must be a positive number of token ids to keep per position")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature={temperature!r} must be a positive number")
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("cannot store teacher outputs of an empty dataset")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        first = next(iter(teacher.parameters()), None)
        home = first.device if first is not None else torch.device("cpu")
        was_training = teacher.training
        teacher.eval().to(device)
        signature = call_signature(teacher)
        # Its own generator: iterating a loader draws a seed, and building must leave the run's RNG as it was.
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn or default_collate,
                            generator=torch.Generator())
        parts: Dict[str, List[np.ndarray]] = {name: [] for name in FILES[:3]}
        lengths: List[int] = []
        vocab = None
        try:
            for batch in loader:
                ids = batch["input_ids"].to(device)
                mask = batch.get("attention_mask")
                mask = torch.ones_like(ids) if mask is None else mask.to(device)
                logits = lm_logits(teacher, ids, mask, *signature).float()
                if vocab is None:
                    vocab = logits.shape[-1]
                    if top_k > vocab:
                        raise ValueError(f"top_k={top_k} exceeds the teacher's vocabulary of {vocab} tokens")
                if not torch.isfinite(logits).all():
                    raise ValueError("the teacher produced non-finite logits; refusing to store them")
                keep = mask.bool()
                lengths.extend(_lengths(mask).tolist())
                logp = torch.log_softmax(logits[keep] / float(temperature), dim=-1)  # [tokens, V]
                values, indices = logp.topk(top_k, dim=-1)
                rest = (-torch.expm1(torch.logsumexp(values, dim=-1))).clamp_min(0.0)
                parts["topk_ids.npy"].append(indices.to(torch.int32).cpu().numpy())
                parts["topk_logprobs.npy"].append(values.to(torch.float16).cpu().numpy())
                parts["rest_mass.npy"].append(rest.cpu().numpy().astype(np.float32))
        finally:
            teacher.to(home).train(was_training)
        if len(lengths) != n:
            raise ValueError(f"the data loader yielded {len(lengths)} sequences, but len(dataset)={n}")
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
        arrays["offsets.npy"] = offsets
        written: Dict[str, Path] = {}
        try:
            for name, arr in arrays.items():
                written[name] = kd_io.temp_path_beside(directory / name)
                with open(written[name], "wb") as f:
                    np.save(f, arr, allow_pickle=False)
            cls.commit(directory, written, {
                "key": key, "count": n, "tokens": int(offsets[-1]), "top_k": int(top_k),
                "temperature": float(temperature), "vocab_size": int(vocab), "teacher_sha256": fingerprint_module(teacher),
                "tokenizer_sha256": fingerprint_tokenizer(tokenizer), "data_sha256": fingerprint_dataset(dataset),
                "files": {name: cls.file_entry(arr) for name, arr in arrays.items()}, **(extra_meta or {})})
        finally:
            for tmp in written.values():
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return cls.open(directory, key=key, verify=False)  # its checksums were just computed

    @classmethod
    def get_or_build(cls, teacher: nn.Module, dataset: Dataset, root: Union[str, os.PathLike], *, tokenizer: Any,
                     top_k: int, temperature: float = 1.0, name: str = "", verify: bool = True,
                     rebuild_damaged: bool = True, **build_kwargs: Any) -> "TokenTeacherOutputs":
        """The stored outputs for (teacher weights, tokenizer, data, k, T) under ``root``: opened and checked, or
        built (under a lock: concurrent runs build once)."""
        teacher_sha, tokenizer_sha = fingerprint_module(teacher), fingerprint_tokenizer(tokenizer)
        key = _sha({"format": FORMAT_VERSION, "kind": KIND, "teacher": teacher_sha, "tokenizer": tokenizer_sha,
                    "data": fingerprint_dataset(dataset), "top_k": int(top_k), "temperature": float(temperature)})[:24]
        directory = Path(root) / (f"{name}-{key}" if name else key)
        return cls.open_or_build(  # type: ignore[return-value]
            directory, lambda: cls.open(directory, teacher=teacher_sha, tokenizer=tokenizer_sha, temperature=temperature,
                                        top_k=top_k, count=len(dataset), key=key, verify=verify),  # type: ignore[arg-type]
            lambda: cls.build(teacher, dataset, directory, tokenizer=tokenizer, top_k=top_k, temperature=temperature,
                              key=key, extra_meta={"name": name}, **build_kwargs),
            rebuild_damaged)


class TeacherOutputsTokenDataset(Dataset):
    """``dataset`` (dict samples) plus each sequence's stored teacher signal under :data:`~kd_lightning.batch.TOPK_KEYS`."""

    def __init__(self, dataset: Dataset, outputs: TokenTeacherOutputs):
        if len(dataset) != len(outputs):  # type: ignore[arg-type]
            raise TeacherOutputsError(f"the data set has {len(dataset)} sequences but {outputs!r} has {len(outputs)}")  # type: ignore[arg-type]
        self.dataset, self.outputs = dataset, outputs

    def __len__(self) -> int:
        return len(self.outputs)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        ids, logprobs, rest = self.outputs.sequence(i)
        return {"sample": self.dataset[i], "ids": ids, "logprobs": logprobs, "rest": rest,
                "temperature": self.outputs.temperature}


class TopKCollate:
    """Collate the base samples with the data's own ``collate_fn``, then pad each sequence's stored
    signal to the batch's length (padding positions are outside the attention mask and never count)."""

    def __init__(self, collate_fn: Optional[Callable] = None):
        self.collate_fn = collate_fn or default_collate

    def __call__(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch = dict(self.collate_fn([item["sample"] for item in items]))
        width = batch["input_ids"].shape[1]
        k = items[0]["ids"].shape[-1]
        ids = torch.zeros((len(items), width, k), dtype=torch.int32)
        logprobs = torch.zeros((len(items), width, k), dtype=torch.float32)
        rest = torch.zeros((len(items), width), dtype=torch.float32)
        for row, item in enumerate(items):
            n = item["ids"].shape[0]
            if n > width:
                raise ValueError(f"a stored sequence has {n} tokens but its batch only {width}: the data's collate "
                                 "function changed since the outputs were stored")
            ids[row, :n], logprobs[row, :n], rest[row, :n] = item["ids"], item["logprobs"], item["rest"]
        batch.update(teacher_topk_ids=ids, teacher_topk_logprobs=logprobs, teacher_rest=rest,
                     teacher_temperature=torch.tensor([item["temperature"] for item in items]))
        return batch


class TeacherOutputsTokenDataModule(WrappedDataModule):
    """A language-model data module whose training batches carry the teacher's stored top-k signal.

    The training set's outputs are built (or opened and checked) at ``setup``; validation and test
    batches are the wrapped module's own. Train with
    ``CausalLMDistillationModule(student, teacher=None, loss=TokenKD(...), teacher_outputs=True)``: no
    teacher runs during training.
    """

    def __init__(self, datamodule: L.LightningDataModule, teacher: nn.Module, root: Union[str, os.PathLike], *,
                 tokenizer: Any = None, top_k: int = 32, temperature: float = 1.0, batch_size: int = 16,
                 verify: bool = True):
        super().__init__(datamodule)
        self.teacher, self.root = teacher, Path(root)
        self.outputs_tokenizer = tokenizer
        self.top_k, self.temperature = top_k, temperature
        self.build_batch_size, self.verify = batch_size, verify
        self.outputs: Optional[TokenTeacherOutputs] = None

    def setup(self, stage: Optional[str] = None) -> None:
        super().setup(stage)
        if stage in (None, "fit") and self.outputs is None:
            self.prepare_outputs()

    def prepare_outputs(self) -> TokenTeacherOutputs:
        base = self.datamodule.train_dataloader()
        tokenizer = self.outputs_tokenizer if self.outputs_tokenizer is not None else getattr(self.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("stored token teacher outputs are keyed by the tokenizer: pass tokenizer=... or give the data module "
                             "a .tokenizer attribute")
        self.outputs = TokenTeacherOutputs.get_or_build(
            self.teacher, base.dataset, self.root, tokenizer=tokenizer, top_k=self.top_k,
            temperature=self.temperature, name="train", verify=self.verify, batch_size=self.build_batch_size,
            collate_fn=base.collate_fn)
        return self.outputs

    def train_dataloader(self) -> DataLoader:
        if self.outputs is None:
            self.prepare_outputs()
        base = self.datamodule.train_dataloader()
        ds = TeacherOutputsTokenDataset(base.dataset, self.outputs)
        return DataLoader(ds, batch_size=base.batch_size, sampler=sampler_like(base, ds), num_workers=base.num_workers,
                          drop_last=base.drop_last, collate_fn=TopKCollate(base.collate_fn))
