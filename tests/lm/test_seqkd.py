"""Sequence-level KD: the teacher's completions are written once, checked by digest, and trained on."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from kd_lightning.lm.generation import Sampling
from kd_lightning.lm.seqkd import SequenceKDDataModule

from .helpers import TinyLM, ragged_batch, rows


class Text(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.rows = rows(ragged_batch([12] * 6, prompt=4, seed=5))

    def train_dataloader(self):
        return DataLoader(self.rows, batch_size=2, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.rows, batch_size=2)


def make(tmp_path, teacher):
    dm = SequenceKDDataModule(Text(), teacher, str(tmp_path), Sampling(max_new_tokens=8, prompt_tokens=4), seed=3)
    dm.setup("fit")
    return dm


def test_completions_continue_the_prompts_and_label_only_generated_tokens(tmp_path):
    dm = make(tmp_path, TinyLM(seed=1))
    data = dm.completions
    original = torch.stack([r["input_ids"] for r in Text().rows])
    assert data["input_ids"].shape == (6, 12) and torch.equal(data["input_ids"][:, :4], original[:, :4])
    assert (data["labels"][:, :4] == -100).all() and torch.equal(data["labels"][:, 4:], data["input_ids"][:, 4:])
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape == (2, 12)
    assert dm.val_dataloader().dataset is dm.datamodule.rows  # held-out text unchanged


def test_completions_are_reused_and_a_damaged_file_is_rebuilt(tmp_path):
    teacher = TinyLM(seed=1)
    first = make(tmp_path, teacher).completions
    (path,) = list(tmp_path.glob("seqkd-*/completions.pt"))
    stamp = path.stat().st_mtime_ns
    assert torch.equal(make(tmp_path, teacher).completions["input_ids"], first["input_ids"])
    assert path.stat().st_mtime_ns == stamp  # read back, not regenerated
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(raw))
    again = make(tmp_path, teacher).completions
    assert torch.equal(again["input_ids"], first["input_ids"])  # rebuilt, same seed, same completions
    other = make(tmp_path, TinyLM(seed=2))  # another teacher: another cache entry
    assert len(list(tmp_path.glob("seqkd-*"))) == 2 and other.completions["input_ids"].shape == (6, 12)
