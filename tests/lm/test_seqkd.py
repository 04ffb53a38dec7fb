"""Sequence-level KD: the teacher's completions are written once, checked by digest, and trained on."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from kd_lightning.exact_resume import ResumableSampler
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
    assert isinstance(dm.train_dataloader().sampler, ResumableSampler)  # shuffle=True's draw, resumable
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


class Pairs(L.LightningDataModule):
    """Prompt/response rows of different lengths, padded per batch by the data's own collate function."""

    def __init__(self):
        super().__init__()
        from kd_lightning.data.text import PadCollate, PromptResponseDataset

        self.collate = PadCollate(pad_id=0)
        self.rows = PromptResponseDataset([([1, 2, 3, 4, 5, 6], [-100] * 3 + [4, 5, 6]),
                                           ([7, 8, 9, 10], [-100] * 3 + [10]),
                                           ([11, 12, 1, 2, 3], [-100] * 3 + [2, 3])])

    def train_dataloader(self):
        return DataLoader(self.rows, batch_size=2, shuffle=True, collate_fn=self.collate)


def test_completions_of_ragged_pairs_use_the_data_modules_collate(tmp_path):
    dm = SequenceKDDataModule(Pairs(), TinyLM(seed=1), str(tmp_path), Sampling(max_new_tokens=5), seed=0)
    dm.setup("fit")
    ids, labels = dm.completions["input_ids"], dm.completions["labels"]
    # Each row continues its own 3-token prompt with 5 sampled tokens, and only those are labelled.
    assert ids.shape == (3, 8) and ids[:, :3].tolist() == [[1, 2, 3], [7, 8, 9], [11, 12, 1]]
    assert (labels[:, :3] == -100).all() and torch.equal(labels[:, 3:], ids[:, 3:])
    # The rows are fingerprinted by content: other responses, another cache entry.
    changed = Pairs()
    changed.rows.rows[0] = ([1, 2, 3, 4, 5, 7], [-100] * 3 + [4, 5, 7])
    dm2 = SequenceKDDataModule(changed, TinyLM(seed=1), str(tmp_path), Sampling(max_new_tokens=5), seed=0)
    dm2.setup("fit")
    assert len(list(tmp_path.glob("seqkd-*"))) == 2
