"""Stopping and continuing a kd-train run.

* On SIGTERM (what SLURM and ``docker stop`` send) Lightning stops the running fit at the end of the
  current step; :class:`InterruptCheckpoint` then writes ``<stage>/checkpoints/interrupted.ckpt``
  (weights, optimizer, scheduler, loop progress and, from :class:`~kd_lightning.exact_resume.ExactResume`,
  the random states and the place in the epoch's data order) and kd-train exits non-zero.
* Every finished stage leaves ``<stage>/stage.json`` (its result and the SHA-256 of ``<stage>/weights.pt``).
* ``resume=true`` reads finished stages back (the weights must match their digest, else the stage runs
  again) and continues the interrupted stage from its checkpoint through ``Trainer.fit(ckpt_path=...)``;
  the stage then ends as it would have unbroken (the same weights and metrics).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from .. import io
from .stage import StageResult

log = logging.getLogger(__name__)
INTERRUPTED = "interrupted.ckpt"


class InterruptCheckpoint(L.Callback):
    """Saves a resumable checkpoint when the fit stops on SIGTERM."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.saved: Optional[Path] = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self.dirpath / INTERRUPTED
        tmp = io.temp_path_beside(path)
        try:
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                io.fsync(tmp)
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.saved = path
        log.warning("SIGTERM: stopped at step %d (epoch %d); resumable checkpoint %s", trainer.global_step,
                    trainer.current_epoch, path)


def interrupted_checkpoint(stage_dir: Path) -> Optional[str]:
    """The stage's resumable checkpoint, or None; one that cannot be read (cut, emptied) is set aside with a
    warning and the stage starts again, since Lightning would fail on it with a traceback."""
    from ..teacher import read_checkpoint

    path = stage_dir / "checkpoints" / INTERRUPTED
    if not path.is_file():
        return None
    try:
        read_checkpoint(path)
    except ValueError as err:
        log.warning("stage %s: %s; training the stage from its start", stage_dir.name, err)
        path.unlink()
        return None
    return str(path)


def record_stage(stage_dir: Path, net: nn.Module, result: StageResult) -> None:
    """``weights.pt`` then ``stage.json`` (last: it marks the stage finished)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "stage.json").unlink(missing_ok=True)
    io.torch_save(net.state_dict(), stage_dir / "weights.pt")
    io.write_json(stage_dir / "stage.json", {"result": dataclasses.asdict(result),
                                             "weights_sha256": io.file_sha256(stage_dir / "weights.pt")})
    interrupted = stage_dir / "checkpoints" / INTERRUPTED
    interrupted.unlink(missing_ok=True)


def finished_stage(stage_dir: Path, net: nn.Module) -> Optional[StageResult]:
    """The recorded result of a finished stage with its weights loaded into ``net``, or None (and why, logged)."""
    import json

    record, weights = stage_dir / "stage.json", stage_dir / "weights.pt"
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
        if not weights.is_file() or io.file_sha256(weights) != data["weights_sha256"]:
            log.warning("stage %s: %s does not match its recorded digest; running the stage again", stage_dir.name,
                        weights)
            return None
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        result = StageResult(**data["result"])
    except Exception as err:  # an unreadable record is a stage to run again, never a crash
        log.warning("stage %s: cannot read it back (%s: %s); running the stage again", stage_dir.name,
                    type(err).__name__, err)
        return None
    log.info("stage %s: finished earlier, read back from %s (weights verified)", stage_dir.name, stage_dir)
    return result
