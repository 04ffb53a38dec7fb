"""One stage of the process: build a Trainer from the config, fit, test, measure the model."""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .batch import unpack


@dataclass
class StageResult:
    name: str
    acc: float
    params: int
    size_bytes: int
    latency_ms: float
    wall_s: float
    acc_top5: Optional[float] = None
    agreement: Optional[float] = None
    val_curve: List[float] = field(default_factory=list)
    ckpt_path: Optional[str] = None
    source: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "name"}


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def state_dict_bytes(net: nn.Module) -> int:
    """Size of the network's weights as ``torch.save`` writes them (what a deployment ships)."""
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.tell()


@torch.no_grad()
def cpu_latency_ms(net: nn.Module, example: torch.Tensor, repeats: int = 50) -> float:
    """Median CPU time of one single-sample forward pass, in milliseconds."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval().cpu()
    x = example[:1].cpu().float()
    for _ in range(5):
        net(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - t0)
    net.to(device).train(was_training)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def make_trainer(cfg: DictConfig, stage: str, max_epochs: Optional[int] = None) -> L.Trainer:
    """A Trainer for ``stage`` with per-stage checkpoint and log directories."""
    stage_dir = Path(cfg.paths.output_dir) / stage
    callbacks: List[L.Callback] = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None or "_target_" not in cb_cfg:
            continue
        extra = {"dirpath": str(stage_dir / "checkpoints")} if name == "model_checkpoint" else {}
        callbacks.append(instantiate(cb_cfg, **extra))
    if not cfg.trainer.get("enable_progress_bar", True):  # a configured bar would contradict the flag
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    loggers = []
    for lg_cfg in (cfg.get("logger") or {}).values():
        if lg_cfg is not None and "_target_" in lg_cfg:
            loggers.append(instantiate(lg_cfg, version=stage))
    overrides: Dict[str, Any] = {"default_root_dir": str(stage_dir), "callbacks": callbacks,
                                 "logger": loggers or False}
    if max_epochs is not None:
        overrides["max_epochs"] = int(max_epochs)
    if not any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks):
        overrides["enable_checkpointing"] = False
    trainer = instantiate(cfg.trainer, **overrides)
    return trainer


def fit_and_test(cfg: DictConfig, stage: str, module: L.LightningModule, datamodule: L.LightningDataModule,
                 net: nn.Module, max_epochs: Optional[int] = None) -> StageResult:
    """Train ``module``, test its best (or last) weights, and measure ``net`` (the deployable model)."""
    trainer = make_trainer(cfg, stage, max_epochs)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    wall = time.perf_counter() - t0
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    use_best = cfg.get("test_ckpt", "best") == "best" and best
    if use_best:
        # Load the best weights into this very module, so `net` is what gets measured and saved.
        state = torch.load(best, map_location="cpu", weights_only=False)
        module.on_load_checkpoint(state)
        module.load_state_dict(state["state_dict"])
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    example = unpack(next(iter(datamodule.test_dataloader()))).x  # tuple or dict batches
    return StageResult(
        name=stage, acc=float(test["test/acc"]), acc_top5=_maybe(test, "test/acc_top5"),
        agreement=_maybe(test, "test/agreement"), params=count_params(net), size_bytes=state_dict_bytes(net),
        latency_ms=cpu_latency_ms(net, example), wall_s=round(wall, 2), val_curve=list(getattr(module, "val_history", [])) or _csv_curve(cfg, stage),
        ckpt_path=best or None)


def test_only(cfg: DictConfig, stage: str, module: L.LightningModule, datamodule: L.LightningDataModule,
              net: nn.Module, wall_s: float, source: str) -> StageResult:
    trainer = make_trainer(cfg, stage)
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    example = unpack(next(iter(datamodule.test_dataloader()))).x  # tuple or dict batches
    return StageResult(name=stage, acc=float(test["test/acc"]), acc_top5=_maybe(test, "test/acc_top5"),
                       params=count_params(net), size_bytes=state_dict_bytes(net),
                       latency_ms=cpu_latency_ms(net, example), wall_s=round(wall_s, 2), source=source)


def _maybe(d: Dict[str, Any], key: str) -> Optional[float]:
    return float(d[key]) if key in d else None


def _csv_curve(cfg: DictConfig, stage: str) -> List[float]:
    # Under ddp_spawn the callback lives in the worker processes; the CSV log is the record then.
    path = Path(cfg.paths.output_dir) / "csv" / stage / "metrics.csv"
    if not path.exists():
        return []
    import csv

    with open(path) as f:
        return [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]
