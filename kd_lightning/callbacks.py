"""Cross-cutting training-step concerns as Lightning callbacks that never wait for the device.

Logging every step's terms, or testing every step's loss for NaN, would each force a device sync.
:class:`TrainTermLogger` keeps the terms on the device and logs their mean over a window of steps
(every ``log_every_n_steps`` and at each epoch's end); :class:`FiniteLossCheck` tests the loss over
the same kind of window on accelerators, and every step on the CPU, where it costs nothing.

Both read ``train_terms``, the detached terms that every family module
(:class:`~kd_lightning.base.TeacherStudentModule`: classifiers, causal LMs, mutual learning) keeps of its
latest training step (any module with that attribute works); the module adds them itself through
``configure_callbacks``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import lightning as L
import torch
from torch import Tensor


def _terms(pl_module: L.LightningModule) -> Optional[Dict[str, Tensor]]:
    return getattr(pl_module, "train_terms", None) or None


class TrainTermLogger(L.Callback):
    """Log each training term as ``train/<term>``: the mean over the steps since the last log."""

    def __init__(self) -> None:
        self.rows: List[Dict[str, Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        terms = _terms(pl_module)
        if terms is None:
            return
        self.rows.append(terms)
        if self.is_log_step(trainer, batch_idx):
            rows, self.rows = self.rows, []
            batch_size = getattr(pl_module, "train_batch_size", None)
            for name in dict.fromkeys(n for r in rows for n in r):
                values = [r[name] for r in rows if name in r]
                value = values[0] if len(values) == 1 else torch.stack(values).float().mean()
                pl_module.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=name == "loss",
                              batch_size=batch_size)

    def is_log_step(self, trainer: L.Trainer, batch_idx: int) -> bool:
        every, step = trainer.log_every_n_steps, trainer.global_step  # global_step already counts this step
        if trainer.fast_dev_run or (every and step % every == 0) or len(self.rows) >= 1000:
            return True
        if trainer.max_steps is not None and 0 < trainer.max_steps <= step:
            return True
        return batch_idx + 1 >= trainer.num_training_batches  # the epoch's last batch


class FiniteLossCheck(L.Callback):
    """Stop with an error that names the bad term when the training loss becomes NaN or infinite.

    Args:
        interval: test every this many steps; None tests every step on the CPU (free there) and at every
            logging step on accelerators (where a test waits for the device).

    Raises:
        FloatingPointError: naming the step and the non-finite term(s).
    """

    def __init__(self, interval: Optional[int] = None) -> None:
        if interval is not None and int(interval) < 1:
            raise ValueError(f"finite_check_interval must be >= 1 or None, got {interval}")
        self.interval = interval
        self.pending: List[Tuple[int, Dict[str, Tensor]]] = []

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        # Before backward: a non-finite loss is reported before it reaches any weight.
        terms = _terms(pl_module) or {"loss": loss.detach()}
        step = trainer.global_step
        self.pending.append((step, terms))
        every = self.interval or (1 if terms["loss"].device.type == "cpu" else max(1, trainer.log_every_n_steps or 50))
        if (step + 1) % every == 0:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        rows, self.pending = self.pending, []
        if not rows:
            return
        losses = torch.stack([r["loss"].float().reshape(()) for _, r in rows])
        if bool(torch.isfinite(losses).all()):
            return
        step, terms = next((s, r) for s, r in rows if not bool(torch.isfinite(r["loss"]).all()))
        bad = [n for n, v in terms.items() if n != "loss" and not torch.isfinite(v).all()]
        culprit = ", ".join(repr(n) for n in bad) or "'loss'"
        raise FloatingPointError(
            f"the loss became non-finite at global step {step} (now at step {trainer.global_step}, epoch "
            f"{trainer.current_epoch}); bad term(s): {culprit}. Lower the learning rate, check the inputs for NaN, "
            "or use fp32/bf16 instead of 16-mixed")
