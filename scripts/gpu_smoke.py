#!/usr/bin/env python
"""GPU smoke test: a few hundred steps of resnet32x4 -> resnet8x4 KD on random CIFAR-shaped data, or
(``--lm``) of token-level KD between two Llama-style language models built from configs with random
weights: a 1B-class student (888M parameters) under a 2.0B teacher, in bf16.

Checks that the models, the distillation module and the chosen precision run on this GPU, and prints the
throughput (images or tokens per second) and the peak memory. Needs no data set and no network. On a
machine without a CUDA GPU it prints a message and exits with status 0 (``--lm --tiny --cpu`` runs a
miniature of the LM case on the CPU, for tests).

    python scripts/gpu_smoke.py [--steps 300] [--batch-size 64] [--precision bf16-mixed]
    python scripts/gpu_smoke.py --lm [--steps 60] [--batch-size 8] [--seq-len 1024]
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps to run (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="steps left out of the timing (default 30)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64, the CIFAR recipe)")
    p.add_argument("--precision", default="bf16-mixed", help="Lightning precision (default bf16-mixed)")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--lm", action="store_true", help="token-level KD of causal LMs instead of CIFAR KD")
    p.add_argument("--seq-len", type=int, default=1024, help="--lm: tokens per sequence (default 1024)")
    p.add_argument("--vocab", type=int, default=32000, help="--lm: vocabulary size (default 32000)")
    p.add_argument("--tiny", action="store_true", help="--lm: miniature models (for a CPU test)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --lm --tiny)")
    args = p.parse_args(argv)
    if args.lm and "--steps" not in (argv or sys.argv):
        args.steps, args.warmup = 60, 10
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    return args


# The --lm models at vocabulary 32,000: a 1B-class student (888M parameters) and a 2.0B teacher.
LM_STUDENT = dict(hidden_size=2048, num_layers=16, num_heads=32, intermediate_size=5632)
LM_TEACHER = dict(hidden_size=2560, num_layers=24, num_heads=32, intermediate_size=6912)
LM_TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def lm_main(args) -> int:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from kd_lightning import CausalLMDistillationModule
    from kd_lightning.losses import TokenKD
    from kd_lightning.models.lm import build_causal_lm, count_parameters

    on_gpu = not args.cpu
    L.seed_everything(0, workers=True)
    dtype = torch.bfloat16
    make = lambda spec: build_causal_lm("llama", vocab_size=args.vocab, max_position_embeddings=args.seq_len,  # noqa: E731
                                        **(LM_TINY if args.tiny else spec)).to(dtype)
    student, teacher = make(LM_STUDENT), make(LM_TEACHER)
    n = 8 * args.batch_size
    ids = torch.randint(0, args.vocab, (n, args.seq_len))
    rows = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in ids]
    loader = DataLoader(rows, batch_size=args.batch_size, shuffle=True, drop_last=True)
    module = CausalLMDistillationModule(student, teacher, loss=TokenKD(divergence="forward", kd_weight=1.0),
                                        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4))
    steps = {"n": 0, "start": None}

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == args.warmup and steps["start"] is None:
                if on_gpu:
                    torch.cuda.synchronize()
                steps["start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps["n"] += steps["start"] is not None

    trainer = L.Trainer(accelerator="gpu" if on_gpu else "cpu", devices=1, precision="bf16-true",
                        max_steps=args.steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()])
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=loader)
    if on_gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - steps["start"]
    rate = steps["n"] * args.batch_size * args.seq_len / elapsed
    where = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if on_gpu else "n/a on the CPU"
    print(f"gpu_smoke --lm: {where} | torch {torch.__version__} | bf16-true | teacher "
          f"{count_parameters(teacher):,} -> student {count_parameters(student):,} parameters, vocabulary {args.vocab}")
    print(f"gpu_smoke --lm: {rate:,.0f} tokens/s over {steps['n']} timed steps of {args.batch_size} x "
          f"{args.seq_len} tokens; peak memory {peak}")
    ok = trainer.global_step == args.steps
    print("gpu_smoke --lm: OK" if ok else f"gpu_smoke --lm: FAILED ({trainer.global_step}/{args.steps} steps)")
    return 0 if ok else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.lm and (args.cpu or torch.cuda.is_available()):
        return lm_main(args)
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU is visible on this machine; nothing to test (skipped, not a failure).")
        return 0

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from kd_lightning import DistillationModule
    from kd_lightning.losses import KD
    from kd_lightning.models.cifar import CIFAR_MODELS

    class Timer(L.Callback):
        """Wall time of the steps after the warm-up, measured between synchronized GPU states."""

        def __init__(self, warmup: int):
            self.warmup, self.start, self.steps, self.loss, self.elapsed = warmup, None, 0, float("nan"), 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == self.warmup and self.start is None:
                torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.start is not None:
                self.steps += 1
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.loss = loss.detach()  # read back once at the end: no GPU sync per step

        def on_train_end(self, trainer, pl_module):
            torch.cuda.synchronize()
            self.elapsed = time.perf_counter() - self.start
            self.loss = float(self.loss)

    L.seed_everything(0, workers=True)
    torch.backends.cudnn.benchmark = True
    n = 64 * args.batch_size  # a pool of random images, cycled through
    data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 100, (n,)))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True, pin_memory=True)
    module = DistillationModule(
        student=CIFAR_MODELS[args.student](num_classes=100),
        teacher=CIFAR_MODELS[args.teacher](num_classes=100),
        loss=KD(temperature=4.0, ce_weight=0.1, kd_weight=0.9),
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),
    )
    timer = Timer(args.warmup)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision=args.precision, max_steps=args.steps,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
    torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=loader)

    name = torch.cuda.get_device_name(0)
    rate = timer.steps * args.batch_size / timer.elapsed
    print(f"gpu_smoke: GPU {name} | torch {torch.__version__} | {args.precision}")
    print(f"gpu_smoke: {args.teacher} -> {args.student} KD, batch {args.batch_size}, {trainer.global_step} steps, "
          f"final loss {timer.loss:.4f}, peak memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"gpu_smoke: {rate:,.1f} images/s over {timer.steps} timed steps ({timer.elapsed:.2f} s)")
    if trainer.global_step != args.steps or not math.isfinite(timer.loss):
        print(f"gpu_smoke: FAILED (ran {trainer.global_step}/{args.steps} steps, final loss {timer.loss})")
        return 1
    print("gpu_smoke: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
