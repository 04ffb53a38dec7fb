"""Sequence-level KD (Kim & Rush 2016): the student trains on the teacher's own completions.

:class:`SequenceKDDataModule` wraps an LM data module. Once, the frozen teacher samples (or, at a low
temperature, nearly decodes greedily) a continuation of every training sequence's prompt; the student
then trains on those sequences (labels on the generated tokens only), while validation and test keep
the original held-out text. The completions are stored under ``cache_dir`` in a file named by the
teacher's weights, the data and the sampling settings, with a SHA-256 digest checked before reuse: a
damaged file is rebuilt, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, Optional

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import io
from ..cache.fingerprint import fingerprint_dataset, fingerprint_module
from ..data.wrapper import WrappedDataModule
from ..exact_resume import sampler_like
from .generation import Sampling, on_policy_batch

log = logging.getLogger(__name__)


class _Rows(Dataset):
    def __init__(self, tensors: Dict[str, Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return self.tensors["input_ids"].shape[0]

    def __getitem__(self, i: int) -> Dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


class SequenceKDDataModule(WrappedDataModule):
    """``datamodule`` whose training data are ``teacher``'s completions of its training prompts."""

    def __init__(self, datamodule: L.LightningDataModule, teacher: nn.Module, cache_dir: str,
                 sampling: Optional[Sampling] = None, batch_size: int = 32, seed: int = 0):
        super().__init__(datamodule)
        self.teacher, self.cache_dir = teacher, Path(cache_dir)
        self.sampling = sampling or Sampling()
        self.generate_batch_size, self.seed = batch_size, seed
        self.completions: Optional[Dict[str, Tensor]] = None

    def key(self, dataset: Dataset) -> str:
        blob = json.dumps({"teacher": fingerprint_module(self.teacher), "data": fingerprint_dataset(dataset),
                           "sampling": asdict(self.sampling), "seed": self.seed}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def setup(self, stage: Optional[str] = None) -> None:
        super().setup(stage)
        if stage in (None, "fit") and self.completions is None:
            self.completions = self.load_or_generate()

    def load_or_generate(self) -> Dict[str, Tensor]:
        loader = self.datamodule.train_dataloader()
        dataset = loader.dataset
        directory = self.cache_dir / f"seqkd-{self.key(dataset)}"
        data, meta = directory / "completions.pt", directory / "meta.json"
        if data.is_file() and meta.is_file():
            try:
                record = json.loads(meta.read_text())
            except (OSError, ValueError):
                record = None  # a damaged record is a cache miss, never a crash
            expected = record.get("sha256") if isinstance(record, dict) else None
            if expected and expected == io.file_sha256(data):
                try:
                    return torch.load(data, map_location="cpu", weights_only=True)
                except Exception:  # matches its digest yet does not load: written by another version
                    pass
            why = "do not match their digest" if expected else f"have an unreadable record {meta}"
            log.warning("sequence-KD completions %s %s; generating them again", data, why)
        completions = self.generate(dataset, loader.collate_fn)
        io.torch_save(completions, data)
        io.write_json(meta, {"sha256": io.file_sha256(data), "rows": int(completions["input_ids"].shape[0]),
                             "sampling": asdict(self.sampling)})
        return completions

    def generate(self, dataset: Dataset, collate_fn: Optional[Callable] = None) -> Dict[str, Tensor]:
        """Completions of every row's prompt; rows are batched with ``collate_fn`` (the wrapped data
        module's own, e.g. the padding of prompt/response pairs), or torch's default."""
        teacher = self.teacher
        device = next(teacher.parameters()).device
        parts: Dict[str, list] = {}
        state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)  # the same completions whenever they are rebuilt
        try:
            for batch in DataLoader(dataset, batch_size=self.generate_batch_size, shuffle=False,
                                    collate_fn=collate_fn):
                batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, Tensor)}
                for k, v in on_policy_batch(teacher, batch, self.sampling).items():
                    parts.setdefault(k, []).append(v.cpu())
        finally:
            torch.random.set_rng_state(state)
        width = max(p.shape[1] for p in parts["input_ids"])
        fill = {"input_ids": self.sampling.pad_token_id, "attention_mask": 0, "labels": -100}
        return {k: torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=fill[k]) for p in v])
                for k, v in parts.items()}

    def train_dataloader(self) -> DataLoader:
        if self.completions is None:
            self.setup("fit")
        base = self.datamodule.train_dataloader()
        rows = _Rows(self.completions)
        return DataLoader(rows, batch_size=base.batch_size, sampler=sampler_like(base, rows), num_workers=base.num_workers)
