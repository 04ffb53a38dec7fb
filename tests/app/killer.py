"""A callback for the interruption tests: sends this process SIGTERM once, at a chosen step of a stage."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class SigtermAtStep(L.Callback):
    def __init__(self, stage: str, step: int, marker: str):
        self.stage, self.step, self.marker = stage, int(step), Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (Path(trainer.default_root_dir).name == self.stage and trainer.global_step == self.step
                and not self.marker.exists()):
            self.marker.write_text(str(trainer.global_step))
            os.kill(os.getpid(), signal.SIGTERM)
