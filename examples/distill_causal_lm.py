"""Drop-in distillation of a causal language model in a plain Lightning project.

Your project already turns text into batches and trains with a ``lightning.Trainer``; distilling a smaller
language model only swaps the LightningModule for ``CausalLMDistillationModule``. Everything here is
offline: the text is CPython's help topics (``pydoc_data``, in every Python installation) and the tokenizer
is a small byte-level BPE trained on them with the library's helper. The script

1. writes its own LightningDataModule whose batches are dicts of ``input_ids``, ``attention_mask`` and
   ``labels`` (-100 where no loss applies), the format Hugging Face collators produce;
2. trains a Llama-style teacher (about 1M parameters at this vocabulary) briefly on the labels;
3. trains the same small student twice with the same Trainer settings: on labels alone, and distilled from
   the teacher with forward KL (``TokenKD``);
4. checks the teacher guarantees (frozen, eval mode, unchanged, out of the optimizer and the checkpoint),

and prints a summary followed by one JSON line with the held-out perplexities.

    python examples/distill_causal_lm.py            # a few minutes on a laptop CPU
    python examples/distill_causal_lm.py --fast     # about half a minute (what the tests run)

In the --fast mode the models train for so few steps that the teacher is barely better than the students,
so its perplexities show the wiring, not what distillation buys; docs/results.md has the measured LM
default (`kd-train experiment=lm_pydoc`), where the distilled student beats its labels-only twin.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import tempfile
import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from kd_lightning import CausalLMDistillationModule
from kd_lightning.data.text import pydoc_topics, train_bpe_tokenizer
from kd_lightning.losses import TokenKD
from kd_lightning.models.lm import lm_preset


# --------------------------------------------------------------------------- the user's own code
class PackedText(Dataset):
    """Fixed-length windows of one token stream; the model shifts the labels itself."""

    def __init__(self, ids: torch.Tensor, seq_len: int):
        self.ids, self.seq_len = ids, seq_len

    def __len__(self) -> int:
        return len(self.ids) // self.seq_len

    def __getitem__(self, i: int) -> dict:
        window = self.ids[i * self.seq_len:(i + 1) * self.seq_len]
        return {"input_ids": window, "attention_mask": torch.ones_like(window), "labels": window.clone()}


class TopicsDataModule(L.LightningDataModule):
    """Every 10th help topic held out; the tokenizer is trained on the training topics only."""

    def __init__(self, vocab_size: int, seq_len: int = 64, batch_size: int = 16):
        super().__init__()
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, batch_size
        self.tokenizer = None

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        docs = [text for _, text in sorted(pydoc_topics().items())]
        train_docs = [d for i, d in enumerate(docs) if i % 10]
        val_docs = [d for i, d in enumerate(docs) if i % 10 == 0]
        self.tokenizer = train_bpe_tokenizer(train_docs, vocab_size=self.vocab_size)

        def stream(texts):
            eos = self.tokenizer.eos_token_id
            return torch.tensor([t for d in texts for t in self.tokenizer.encode(d) + [eos]], dtype=torch.long)

        self.train_set = PackedText(stream(train_docs), self.seq_len)
        self.val_set = PackedText(stream(val_docs), self.seq_len)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def trainer(steps: int, val_batches: int | float = 1.0) -> L.Trainer:
    """The project's Trainer settings, the same for every model."""
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=val_batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("KD_EXAMPLES_FAST") == "1",
                        help="fewer topics and steps (also: KD_EXAMPLES_FAST=1)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    vocab, teacher_steps, student_steps, val_batches = (512, 100, 60, 8) if args.fast else (2048, 500, 300, 1.0)
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)

    data = TopicsDataModule(vocab)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    vocab_size = len(data.tokenizer)
    adamw = functools.partial(torch.optim.AdamW, lr=3e-3)

    # 1. A teacher trained on the labels: the same module class with no teacher and cross-entropy only.
    teacher = lm_preset("lm_teacher_1m", vocab_size=vocab_size)
    labels_only = functools.partial(TokenKD, ce_weight=1.0, kd_weight=0.0)
    fresh = CausalLMDistillationModule(lm_preset("lm_student_150k", vocab_size=vocab_size), loss=labels_only())
    untrained = trainer(0, val_batches).validate(fresh, datamodule=data, verbose=False)
    trainer(teacher_steps).fit(CausalLMDistillationModule(teacher, loss=labels_only(), optimizer=adamw),
                               datamodule=data)

    # 2. The same student twice: labels only, then distilled (the only change is the module's arguments).
    L.seed_everything(1, verbose=False)
    baseline = CausalLMDistillationModule(lm_preset("lm_student_150k", vocab_size=vocab_size), loss=labels_only(),
                                          optimizer=adamw)
    trainer(student_steps).fit(baseline, datamodule=data)
    baseline_metrics = trainer(0, val_batches).validate(baseline, datamodule=data, verbose=False)[0]

    L.seed_everything(1, verbose=False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = CausalLMDistillationModule(
        student=lm_preset("lm_student_150k", vocab_size=vocab_size),
        teacher=teacher,
        loss=TokenKD(divergence="forward", temperature=1.0, ce_weight=0.0, kd_weight=1.0),
        optimizer=adamw,
    )
    fit = trainer(student_steps)
    fit.fit(module, datamodule=data)
    metrics = trainer(0, val_batches).validate(module, datamodule=data, verbose=False)[0]

    # 3. The teacher guarantees, observed from outside the module.
    optimized = {id(p) for group in fit.optimizers[0].param_groups for p in group["params"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "student.ckpt")
        fit.save_checkpoint(path)
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    teacher_keys = [k for k in state if k.startswith("teacher")]

    result = {
        "batch_keys": sorted(batch),
        "batch_shape": list(batch["input_ids"].shape),
        "vocab_size": vocab_size,
        "untrained_ppl": untrained[0]["val/ppl"],
        "teacher_ppl": metrics["val/teacher_ppl"],
        "baseline_ppl": baseline_metrics["val/ppl"],
        "student_ppl": metrics["val/ppl"],
        "agreement": metrics["val/agreement"],
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in module.student.parameters()),
        "teacher_frozen": not any(p.requires_grad for p in teacher.parameters()),
        "teacher_eval": not teacher.training,
        "teacher_unchanged": all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()),
        "teacher_in_optimizer": any(id(p) in optimized for p in teacher.parameters()),
        "teacher_keys_in_ckpt": len(teacher_keys),
    }
    print(f"batches: {result['batch_keys']} of shape {result['batch_shape']}, vocabulary {vocab_size}")
    print(f"held-out perplexity: untrained {result['untrained_ppl']:.1f}, teacher {result['teacher_ppl']:.1f} "
          f"({result['teacher_params']:,} parameters), labels-only student {result['baseline_ppl']:.1f}, "
          f"distilled student {result['student_ppl']:.1f} ({result['student_params']:,} parameters)")
    assert all(math.isfinite(result[k]) for k in ("teacher_ppl", "baseline_ppl", "student_ppl"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
