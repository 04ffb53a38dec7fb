"""Training-step bookkeeping that never waits for the device.

Logging every step's terms, or testing every step's loss for NaN, would each force a device sync.
:class:`TrainTermsWindow` keeps the terms on the device and logs their mean over a window of steps
(every ``log_every_n_steps`` and at each epoch's end); the finiteness test runs over the same kind of
window on accelerators and every step on the CPU, where it costs nothing.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor
from torchmetrics import MeanMetric


class SyncFreeMean(MeanMetric):
    """``MeanMetric`` without the per-update NaN test, whose ``.any()`` waits for the device at every step
    (a NaN then shows in the result instead; ``nan_strategy="disable"`` would also drop the weights)."""

    def _cast_and_nan_check_input(self, x: Any, weight: Any = None) -> tuple:
        x = torch.as_tensor(x, device=self.device)
        weight = torch.ones_like(x) if weight is None else torch.as_tensor(weight, device=self.device)
        return x.to(self.dtype), weight.to(self.dtype)


class TrainTermsWindow:
    """Mixin for a LightningModule whose ``hparams`` has ``check_finite`` and ``finite_check_interval``."""

    def _reset_windows(self) -> None:
        self._log_rows: list = []  # training terms since the last log (device tensors)
        self._check_rows: list = []  # (step, terms) not yet tested for finiteness

    def _record_train_terms(self, terms: Dict[str, Tensor], batch_idx: int, batch_size: Optional[int]) -> None:
        detached = {name: value.detach() for name, value in terms.items()}
        step = self.global_step
        if self.hparams.check_finite:
            self._check_rows.append((step, detached))
            every = self.hparams.finite_check_interval or self._auto_check_interval(terms["loss"])
            if (step + 1) % every == 0:
                self._check_finite()
        if self._trainer is not None:
            self._log_rows.append(detached)
            if self._is_log_step(batch_idx):
                self._log_train_terms(batch_size)

    def _auto_check_interval(self, loss: Tensor) -> int:
        if loss.device.type == "cpu":
            return 1
        return max(1, int(self.trainer.log_every_n_steps or 50)) if self._trainer is not None else 50

    def _is_log_step(self, batch_idx: int) -> bool:
        trainer = self.trainer
        every = trainer.log_every_n_steps
        if trainer.fast_dev_run or (every and (self.global_step + 1) % every == 0) or len(self._log_rows) >= 1000:
            return True
        if trainer.max_steps is not None and trainer.max_steps > 0 and self.global_step + 1 >= trainer.max_steps:
            return True
        return batch_idx + 1 >= trainer.num_training_batches  # the epoch's last batch

    def _log_train_terms(self, batch_size: Optional[int]) -> None:
        rows, self._log_rows = self._log_rows, []
        names = list(dict.fromkeys(n for r in rows for n in r))
        for name in names:
            values = [r[name] for r in rows if name in r]
            value = values[0] if len(values) == 1 else torch.stack(values).float().mean()
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=name == "loss",
                     batch_size=batch_size)

    def _check_finite(self) -> None:
        rows, self._check_rows = self._check_rows, []
        if not rows:
            return
        if len(rows) == 1:
            ok = bool(torch.isfinite(rows[0][1]["loss"]).all())
        else:
            ok = bool(torch.isfinite(torch.stack([r["loss"].float().reshape(()) for _, r in rows])).all())
        if not ok:
            step, terms = next((s, r) for s, r in rows if not bool(torch.isfinite(r["loss"]).all()))
            self._raise_not_finite(terms, step)

    def on_train_epoch_end(self) -> None:
        if self.hparams.check_finite:
            self._check_finite()

    def _raise_not_finite(self, terms: Dict[str, Tensor], step: Optional[int] = None) -> None:
        bad = [n for n, v in terms.items() if n != "loss" and not torch.isfinite(v).all()]
        culprit = ", ".join(repr(n) for n in bad) or "'loss'"
        step = self.global_step if step is None else step
        raise FloatingPointError(
            f"the loss became non-finite at global step {step} (now at step {self.global_step}, epoch "
            f"{self.current_epoch}); bad term(s): {culprit}. Lower the learning rate, check the inputs for NaN, "
            "or use fp32/bf16 instead of 16-mixed")

