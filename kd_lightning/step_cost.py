"""What one training step costs: a Lightning callback that measures time per step, peak memory and the
parameters a loss adds, and writes them beside the run (``<default_root_dir>/step_cost.json``).

Time: the median wall time from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, loss,
backward and optimizer step), after ``warmup`` steps, synchronized on CUDA. Memory: on CUDA the peak of
``torch.cuda.max_memory_allocated`` during training above what was allocated at its start; on Linux CPUs
the growth of the peak resident set (``VmHWM``, whose window is reset through ``/proc/self/clear_refs``), so
runs that follow each other in one process (a Hydra multirun) are measured apart. Elsewhere it is null.
"""
from __future__ import annotations

import ctypes
import gc
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import lightning as L
import torch

from . import io

FILENAME = "step_cost.json"


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(key + r":\s+(\d+)", f.read())
    if match is None:
        raise OSError(f"/proc/self/status has no {key}")
    return int(match.group(1))


def start_peak_window(device: torch.device) -> Optional[float]:
    """Begin a peak-memory window; the bytes in use now, or None where peaks cannot be measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # so the window's peak includes the workspaces its kernels allocate
        torch.cuda.reset_peak_memory_stats(device)
        return float(torch.cuda.memory_allocated(device))
    gc.collect()
    try:
        # Give freed heap pages back first, so memory left over by an earlier run in this process is not
        # reused unseen (the peak would then understate what this run needs).
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        return _status_kib("VmRSS") * 1024.0
    except OSError:
        return None


def peak_since(device: torch.device, base: Optional[float]) -> Optional[float]:
    """MiB above ``base`` at the window's peak (None when unmeasured)."""
    if base is None:
        return None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return max(0.0, torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        return max(0.0, _status_kib("VmHWM") * 1024.0 - base) / 2**20
    except OSError:
        return None


class StepCost(L.Callback):
    """Measure a fit's training steps and write ``step_cost.json`` into the trainer's ``default_root_dir``.

    Args:
        warmup: steps left out of the timing (first-call costs, allocator growth).

    The file holds ``step_s`` (median seconds per step), ``steps_timed``, ``peak_mib``, ``loss_params``
    (trainable parameters of ``pl_module.loss``: adapters, learned temperatures) and ``device``.

    Example::

        trainer = L.Trainer(callbacks=[StepCost()], default_root_dir="runs/kd")
    """

    def __init__(self, warmup: int = 5):
        if not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"StepCost warmup must be an integer >= 0, got {warmup!r}")
        self.warmup = warmup
        self.times: List[float] = []
        self._t0: Optional[float] = None
        self._base: Optional[float] = None
        self._seen = 0

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times, self._seen = [], 0
        self._base = start_peak_window(pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._t0 is None:
            return
        self._sync(pl_module)
        self._seen += 1
        if self._seen > self.warmup:
            self.times.append(time.perf_counter() - self._t0)
        self._t0 = None

    def summary(self, pl_module: L.LightningModule) -> Dict[str, Any]:
        loss = getattr(pl_module, "loss", None)
        params = sum(p.numel() for p in loss.parameters() if p.requires_grad) if isinstance(loss, torch.nn.Module) else 0
        return {"step_s": statistics.median(self.times) if self.times else None, "steps_timed": len(self.times),
                "peak_mib": peak_since(pl_module.device, self._base), "loss_params": int(params),
                "device": pl_module.device.type}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with io.atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.summary(pl_module), indent=1))
