"""The stages of one run: each gets its own Trainer, checkpoint and log directories, and is resumable."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from ..exact_resume import ExactResume
from . import resume
from .build import build_callbacks, build_loggers
from .interrupt import stop_if_received
from .stage import Measure, StageResult, ValidationCurve, count_params, fit_and_test, measure, test_only

log = logging.getLogger(__name__)


class Stages:
    """Builds each stage's Trainer from the ``trainer``, ``callbacks`` and ``logger`` nodes, fits or tests the
    stage's module with it, and records a finished stage in ``out_dir`` (what ``resume=true`` reads back)."""

    def __init__(self, trainer_cfg: DictConfig, out_dir: Path, callbacks_cfg: Optional[DictConfig] = None,
                 logger_cfg: Optional[DictConfig] = None, test_ckpt: str = "best", resume: bool = False,
                 measure: Measure = measure, curve_key: str = "val/acc", trackers: Any = None):
        self.trainer_cfg, self.callbacks_cfg, self.logger_cfg = trainer_cfg, callbacks_cfg, logger_cfg
        self.trackers = trackers  # the job's experiment-tracker runs (logger=wandb|mlflow), shared by the stages
        self.out_dir, self.test_ckpt, self.resume = Path(out_dir), str(test_ckpt), bool(resume)
        self.measure, self.curve_key = measure, curve_key  # by task: what a stage's result holds

    def trainer(self, stage: str, max_epochs: Optional[int] = None, max_steps: Optional[int] = None) -> L.Trainer:
        stage_dir = self.out_dir / stage
        callbacks = build_callbacks(self.callbacks_cfg, str(stage_dir / "checkpoints"),
                                    progress_bar=bool(self.trainer_cfg.get("enable_progress_bar", True)))
        overrides: Dict[str, Any] = {"default_root_dir": str(stage_dir), "callbacks": callbacks,
                                     "logger": build_loggers(self.logger_cfg, stage, self.trackers) or False}
        if max_epochs is not None:
            overrides["max_epochs"] = int(max_epochs)
        if max_steps is not None:
            overrides["max_steps"] = int(max_steps)
        if not any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks):
            overrides["enable_checkpointing"] = False
        callbacks.append(resume.InterruptCheckpoint(str(stage_dir / "checkpoints")))  # SIGTERM: resumable
        callbacks.append(ExactResume())  # ... and resumed exactly: random states and data order in checkpoints
        callbacks.append(ValidationCurve(self.curve_key))  # the stage's curve, kept across a resume
        return instantiate(self.trainer_cfg, **overrides)

    def finished(self, name: str, net: nn.Module) -> Optional[StageResult]:
        """With ``resume=true``: the stage ``name`` as this run finished it earlier (its record verified and
        its weights loaded into ``net``), or None."""
        return resume.finished_stage(self.out_dir / name, net) if self.resume else None

    def fit(self, name: str, module: L.LightningModule, datamodule: L.LightningDataModule, net: nn.Module,
            max_epochs: Optional[int] = None, max_steps: Optional[int] = None) -> StageResult:
        stage_dir = self.out_dir / name
        done = self.finished(name, net)
        if done is not None:
            return done
        ckpt = resume.interrupted_checkpoint(stage_dir) if self.resume else None
        log.info("stage %s: %s %s (%s parameters)", name, "resuming" if ckpt else "training", type(net).__name__,
                 f"{count_params(net):,}")
        with keep_dtype(net):
            try:
                result = fit_and_test(name, self.trainer(name, max_epochs, max_steps), module, datamodule, net,
                                      self.test_ckpt, self.measure, self.curve_key, ckpt_path=ckpt)
            except FloatingPointError as err:  # a diverging loss (FiniteLossCheck): say which stage it was
                raise FloatingPointError(f"stage {name}: {err}") from None
        if primary_process():  # every DDP rank runs the process; one writes
            resume.record_stage(stage_dir, net, result)
        stop_if_received()
        return result

    def test(self, name: str, module: L.LightningModule, datamodule: L.LightningDataModule, net: nn.Module,
             wall_s: float, source: str) -> StageResult:
        log.info("stage %s: testing %s (%s)", name, type(net).__name__, source)
        with keep_dtype(net):
            result = test_only(name, self.trainer(name), module, datamodule, net, wall_s, source, self.measure)
        stop_if_received()
        return result


@contextlib.contextmanager
def keep_dtype(net: nn.Module) -> Iterator[None]:
    """Give ``net`` back its floating dtype after a stage: ``trainer.precision=64-true`` (or ``bf16-true``)
    converts the module it fits, and the next stage pairs this network with one in the original dtype."""
    dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), None)
    try:
        yield
    finally:
        if dtype is not None:
            net.to(dtype)


def primary_process() -> bool:
    """Rank 0 of a distributed run (or the only process). Under ``trainer=ddp``/``ddp_cpu`` every rank runs
    the whole process, with identical results; only this one writes the run's files."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0
