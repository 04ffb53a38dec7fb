#!/usr/bin/env python
"""GPU smoke test: a few hundred steps of resnet32x4 -> resnet8x4 KD on random CIFAR-shaped data.

Checks that the CIFAR zoo, DistillationModule and the chosen precision (bf16-mixed by default) run on
this GPU, and prints the throughput in images per second. Needs no data set and no network. On a
machine without a CUDA GPU it prints a message and exits with status 0.

    python scripts/gpu_smoke.py [--steps 300] [--batch-size 64] [--precision bf16-mixed]
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
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

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
