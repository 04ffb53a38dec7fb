"""Distill a causal language model into a student that reads text with another tokenizer.

The teacher and the student tokenize the same text differently (here a byte-level BPE for the teacher and a
byte-level Unigram for the student, both trained on CPython's help topics, offline), so their logits cannot
be compared token by token. The data give each text once; ``CrossTokenizerCollate`` tokenizes it with both
tokenizers and adds how the two tokenizations line up; a cross-tokenizer loss (``SpanAlign``, or ``ULD``)
then distills. The script

1. trains the teacher briefly on its own tokens (the usual module, labels only);
2. trains the same small student twice with the same settings on the student's tokens: on labels alone,
   and distilled from the teacher with span alignment;
3. compares all three by bits per byte of the held-out topics, which does not depend on the tokenizer,

and prints a summary followed by one JSON line.

    python examples/distill_cross_tokenizer.py          # a few minutes on a laptop CPU
    python examples/distill_cross_tokenizer.py --fast   # a few seconds (what the tests run)

In the --fast mode the models are tiny and train for a few steps, so the figures show the wiring, not
what distillation buys; docs/language-models.md has the measured table (experiment=lm_pydoc_xtok).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader

from kd_lightning import CausalLMDistillationModule
from kd_lightning.data.text import pydoc_topics, train_tokenizer
from kd_lightning.lm import CrossTokenizerCollate
from kd_lightning.losses import SpanAlign, TokenKD
from kd_lightning.models.lm import build_causal_lm


def pieces(docs, size):
    """Each document cut into texts of about ``size`` characters (at spaces); the last piece ends it."""
    out = []
    for doc in docs:
        start = 0
        while start < len(doc):
            stop = doc.find(" ", start + size)
            stop = len(doc) if stop < 0 else stop
            out.append({"text": doc[start:stop], "eos": stop == len(doc)})
            start = stop
    return out


def model(tokenizer, hidden, layers, seq_len):
    return build_causal_lm("llama", vocab_size=len(tokenizer), hidden_size=hidden, num_layers=layers, num_heads=4,
                           intermediate_size=2 * hidden, max_position_embeddings=seq_len)


def trainer(steps):
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("KD_EXAMPLES_FAST") == "1",
                        help="a few topics, tiny models and a few steps (also: KD_EXAMPLES_FAST=1)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*in eval mode at the start of training.*")
    topics, vocab, hidden, steps = (12, (400, 320), 32, (30, 15)) if args.fast else (None, (2048, 1024), 128, (500, 300))
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)

    docs = [text for _, text in sorted(pydoc_topics().items())][:topics]
    train_docs = [d for i, d in enumerate(docs) if i % 6]
    val_docs = [d for i, d in enumerate(docs) if i % 6 == 0]
    teacher_tok = train_tokenizer(train_docs, vocab[0], kind="bpe")
    student_tok = train_tokenizer(train_docs, vocab[1], kind="unigram")
    seq_len = 64
    collate = CrossTokenizerCollate(teacher_tok, student_tok, max_length=seq_len)
    # The teacher's own view of the same texts: its tokens as the student's (the collate swapped).
    teacher_view = CrossTokenizerCollate(student_tok, teacher_tok, max_length=seq_len)
    train_texts, val_texts = pieces(train_docs, 200), pieces(val_docs, 200)
    loader = functools.partial(DataLoader, batch_size=16)
    adamw = functools.partial(torch.optim.AdamW, lr=3e-3)
    labels_only = functools.partial(TokenKD, ce_weight=1.0, kd_weight=0.0)

    def bits_per_byte(module, view):
        return trainer(0).validate(module, loader(val_texts, collate_fn=view), verbose=False)[0]["val/bpb"]

    # 1. The teacher, on its own tokens.
    teacher = model(teacher_tok, 2 * hidden, 2, seq_len)
    teacher_module = CausalLMDistillationModule(teacher, loss=labels_only(), optimizer=adamw, tokenizer=teacher_tok)
    trainer(steps[0]).fit(teacher_module, loader(train_texts, shuffle=True, collate_fn=teacher_view))
    teacher_bpb = bits_per_byte(teacher_module, teacher_view)

    # 2. The same student twice, on its own tokens: labels only, then distilled across the tokenizers.
    L.seed_everything(1, verbose=False)
    baseline = CausalLMDistillationModule(model(student_tok, hidden, 1, seq_len), loss=labels_only(), optimizer=adamw,
                                          tokenizer=student_tok)
    trainer(steps[1]).fit(baseline, loader(train_texts, shuffle=True, collate_fn=collate))
    L.seed_everything(1, verbose=False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = CausalLMDistillationModule(
        student=model(student_tok, hidden, 1, seq_len), teacher=teacher,
        loss=SpanAlign(ce_weight=1.0, span_weight=1.0, next_weight=1.0),
        teacher_tokenizer=teacher_tok, student_tokenizer=student_tok, optimizer=adamw)
    fit = trainer(steps[1])
    fit.fit(module, loader(train_texts, shuffle=True, collate_fn=collate))
    batch = collate(train_texts[:2])

    result = {
        "batch_keys": sorted(batch),
        "teacher_vocab": len(teacher_tok), "student_vocab": len(student_tok),
        "teacher_bpb": teacher_bpb,
        "baseline_bpb": bits_per_byte(baseline, collate),
        "student_bpb": bits_per_byte(module, collate),
        "train_terms": sorted(k[len("train/"):] for k in fit.callback_metrics if k.startswith("train/")),
        "teacher_unchanged": all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()),
        "teacher_frozen": not any(p.requires_grad for p in teacher.parameters()),
    }
    print(f"teacher: BPE of {result['teacher_vocab']} tokens; student: Unigram of {result['student_vocab']} tokens")
    print(f"held-out bits per byte: teacher {teacher_bpb:.3f}, labels-only student {result['baseline_bpb']:.3f}, "
          f"distilled student {result['student_bpb']:.3f}")
    assert all(math.isfinite(result[k]) for k in ("teacher_bpb", "baseline_bpb", "student_bpb"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
