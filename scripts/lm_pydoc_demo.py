"""Offline LM distillation demo on CPython's pydoc topics (plain Lightning Trainer, no Hydra).

A byte-level BPE tokenizer of 2048 tokens, context 128, batch 16, AdamW 3e-3 with a one-cycle schedule:
a Llama-style teacher (~1.04M parameters) is trained on the labels, then two ~0.15M students — one on
the labels alone, one distilled from the teacher (forward KL, T = 1, kd_weight 1, ce_weight 0). Prints
the held-out perplexity of the three and the wall time.

    python scripts/lm_pydoc_demo.py --seeds 1 2 3
"""
from __future__ import annotations

import argparse
import functools
import time

import lightning as L
import torch

from kd_lightning import CausalLMDistillationModule
from kd_lightning.data.text import PydocTextDataModule
from kd_lightning.losses import TokenKD
from kd_lightning.models.lm import count_parameters, lm_preset


def train(student, teacher, loss, steps, dm, lr):
    module = CausalLMDistillationModule(
        student, teacher, loss, optimizer=functools.partial(torch.optim.AdamW, lr=lr),
        scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=lr, total_steps=steps),
        scheduler_interval="step", tokenizer=dm.tokenizer)
    quiet = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                 enable_progress_bar=False, enable_model_summary=False)
    L.Trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, **quiet).fit(module, datamodule=dm)
    metrics = L.Trainer(**quiet).validate(module, datamodule=dm, verbose=False)[0]
    return module, metrics


def run(seed, args, dm):
    L.seed_everything(seed, verbose=False)
    start = time.perf_counter()
    teacher = lm_preset("lm_teacher_1m", vocab_size=len(dm.tokenizer))
    _, t_metrics = train(teacher, None, TokenKD(ce_weight=1.0, kd_weight=0.0), args.teacher_steps, dm, args.lr)
    t_time = time.perf_counter() - start

    L.seed_everything(seed + 1000, verbose=False)
    base = lm_preset("lm_student_150k", vocab_size=len(dm.tokenizer))
    init = {k: v.clone() for k, v in base.state_dict().items()}
    _, b_metrics = train(base, None, TokenKD(ce_weight=1.0, kd_weight=0.0), args.student_steps, dm, args.lr)
    b_time = time.perf_counter() - start - t_time

    L.seed_everything(seed + 1000, verbose=False)  # same initial weights and batch order as the baseline
    student = lm_preset("lm_student_150k", vocab_size=len(dm.tokenizer))
    student.load_state_dict(init)
    kd = TokenKD(divergence="forward", temperature=1.0, ce_weight=0.0, kd_weight=1.0)
    _, s_metrics = train(student, teacher, kd, args.student_steps, dm, args.lr)
    total = time.perf_counter() - start
    print(f"seed {seed}: teacher ppl {t_metrics['val/ppl']:.1f} ({count_parameters(teacher):,} params, "
          f"{t_time:.0f}s) | labels-only student ppl {b_metrics['val/ppl']:.1f} ({b_time:.0f}s) | distilled student "
          f"ppl {s_metrics['val/ppl']:.1f} (agreement {s_metrics['val/agreement']:.3f}, bpb {s_metrics['val/bpb']:.3f}) "
          f"| wall {total:.0f}s", flush=True)
    return t_metrics["val/ppl"], b_metrics["val/ppl"], s_metrics["val/ppl"], total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--teacher-steps", type=int, default=500)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--cache-dir", default=".cache/kd_lightning")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dm = PydocTextDataModule(seq_len=128, batch_size=16, vocab_size=2048, cache_dir=args.cache_dir)
    dm.setup("fit")
    print(f"tokenizer {len(dm.tokenizer)} tokens; {len(dm.train_set)} train / {len(dm.val_set)} held-out "
          f"sequences of 128", flush=True)
    rows = [run(seed, args, dm) for seed in args.seeds]
    if len(rows) > 1:
        mean = [sum(r[i] for r in rows) / len(rows) for i in range(4)]
        print(f"mean over {len(rows)} seeds: teacher {mean[0]:.1f} | labels-only {mean[1]:.1f} | distilled "
              f"{mean[2]:.1f} | wall {mean[3]:.0f}s per seed")


if __name__ == "__main__":
    main()
