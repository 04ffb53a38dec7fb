"""A Rich progress bar whose per-step cost does not grow with the step rate."""
from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``, told about training batches at most ``refresh_rate`` times a second.

    The stock bar collects the progress-bar metrics and updates its task after every batch, although it
    redraws only ``refresh_rate`` times a second; on a small model (MNIST-1D) that bookkeeping is a few
    percent of each step (``scripts/bench_overhead.py``). Here a batch that ends within ``1/refresh_rate``
    seconds of the last update is skipped, except an epoch's last; what is drawn is the same.
    """

    def __init__(self, refresh_rate: int = 2, **kwargs: Any):
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.throttle_s = 1.0 / refresh_rate if refresh_rate > 0 else float("inf")
        self.last_train_update = float("-inf")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self.last_train_update < self.throttle_s and batch_idx + 1 < trainer.num_training_batches:
            return
        self.last_train_update = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
        # The logger's version is the stage name in kd-train ("v_num: cher"); the bar's title says it already.
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
