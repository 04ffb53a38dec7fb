"""A callback for the interruption tests: sends this process SIGTERM (or SIGINT) once, at a chosen step of a stage."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class SigtermAtStep(L.Callback):
    def __init__(self, stage: str, step: int, marker: str, sig: str = "SIGTERM"):
        self.stage, self.step, self.marker = stage, int(step), Path(marker)
        self.sig = getattr(signal, sig)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (Path(trainer.default_root_dir).name == self.stage and trainer.global_step == self.step
                and not self.marker.exists()):
            self.marker.write_text(str(trainer.global_step))
            os.kill(os.getpid(), self.sig)


# ------------------------------------------------------------------ SIGTERM outside a Trainer run
# ``python killer.py <kd-train overrides>`` runs kd-train's real entry point after arranging one SIGTERM at
# the point named by the environment variable KD_TEST_SIGTERM_AT:
#   report         while summary.json is being written (its bytes in the temporary file, not yet renamed)
#   teacher_outputs  while stored teacher outputs are being built (after its first batch)
#   full_disk      no SIGTERM: the disk "fills up" while summary.json is written (ENOSPC from its fsync)
def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _arrange(point: str) -> None:
    if point == "report":
        from kd_lightning import io

        plain_fsync = io.fsync

        def fsync(path):
            if Path(path).name.startswith(".summary.json."):
                _sigterm_self()
            return plain_fsync(path)

        io.fsync = fsync
    elif point == "teacher_outputs":
        from kd_lightning.cache import store

        plain_unpack, calls = store.unpack, []

        def unpack(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                _sigterm_self()
            return plain_unpack(*args, **kwargs)

        store.unpack = unpack
    elif point == "full_disk":
        import errno

        from kd_lightning import io

        plain_fsync = io.fsync

        def full(path):
            if Path(path).name.startswith(".summary.json."):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return plain_fsync(path)

        io.fsync = full
    elif point:
        raise ValueError(f"KD_TEST_SIGTERM_AT={point!r} is not a known point")


if __name__ == "__main__":
    _arrange(os.environ.get("KD_TEST_SIGTERM_AT", ""))
    from kd_lightning.app.train import main

    main()
