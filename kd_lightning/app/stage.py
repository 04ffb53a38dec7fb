"""One stage of the process: fit a built module with a built Trainer, test it, measure the network."""
from __future__ import annotations

import copy
import csv
import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import lightning as L
import torch
from torch import nn

from ..batch import unpack
from .cost import serving_cost


@dataclass
class StageResult:
    """What the report keeps of one stage."""

    name: str
    acc: Optional[float]  # classification; None for a language model
    params: int
    size_bytes: int
    latency_ms: float
    wall_s: float
    acc_top5: Optional[float] = None
    agreement: Optional[float] = None
    # Language models: held-out perplexity and bits per byte, forward throughput, sampled continuations.
    ppl: Optional[float] = None
    bpb: Optional[float] = None
    tokens_per_s: Optional[float] = None
    samples: Optional[List[str]] = None
    # The teacher's perplexity of the model's own samples from the held-out prompts (app.tasks.causal_lm).
    teacher_ppl_of_samples: Optional[float] = None
    # Serving cost (classifiers): deterministic figures, and latency's spread and serving-batch time.
    macs_per_sample: Optional[int] = None
    latency_iqr_ms: Optional[float] = None
    latency_serving_ms_per_sample: Optional[float] = None
    # Language models trained on stored teacher outputs: their k, size on disk and bytes per token.
    teacher_outputs: Optional[Dict[str, Any]] = None
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


def measure(name: str, net: nn.Module, datamodule: L.LightningDataModule, test: Dict[str, Any],
            wall_s: float, timing: Optional[Dict[str, Any]] = None, **extra: Any) -> StageResult:
    """A :class:`StageResult` from Lightning's test metrics plus the network's size and serving cost
    (:mod:`.cost`: multiply-accumulates, and latency with warm-up, repeats and its spread; ``timing``
    sets those, the config's ``latency`` group)."""
    example = unpack(next(iter(datamodule.test_dataloader()))).x  # tuple or dict batches
    cost = serving_cost(net, example, **(timing or {}))
    return StageResult(
        name=name, acc=float(test["test/acc"]), acc_top5=_maybe(test, "test/acc_top5"),
        agreement=_maybe(test, "test/agreement"), params=count_params(net), size_bytes=state_dict_bytes(net),
        latency_ms=cost["latency_ms"], latency_iqr_ms=cost["latency_iqr_ms"],
        latency_serving_ms_per_sample=cost["latency_serving_ms_per_sample"],
        macs_per_sample=cost["macs_per_sample"], wall_s=round(wall_s, 2), **extra)


Measure = Callable[..., StageResult]  # (name, net, datamodule, test metrics, wall_s, **extra)


def shards_parameters(trainer: L.Trainer) -> bool:
    """Whether the trainer's strategy shards the module's parameters across ranks (FSDP, FSDP2)."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))


def load_student_weights(net: nn.Module, state: Dict[str, Any], prefix: str = "student.") -> nn.Module:
    """Load the ``prefix`` keys of a module's full (gathered) state dict into the plain network ``net``, strictly."""
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not own:
        raise ValueError(f"the gathered state dict has no {prefix!r} keys (got {len(state)} keys, e.g. "
                         f"{sorted(state)[:3]}); cannot recover the trained network")
    net.load_state_dict(own, strict=True)
    return net


class ValidationCurve(L.Callback):
    """The value of ``key`` after each validation of the fit (sanity checks left out). It travels in
    checkpoints, so a stage resumed from one reports the whole curve, as if never stopped (the module's own
    history and the CSV log start again at the resume)."""

    def __init__(self, key: str = "val/acc"):
        self.key, self.values = key, []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is not None and not trainer.sanity_checking:
            self.values.append(float(value))

    def state_dict(self) -> Dict[str, Any]:
        return {"key": self.key, "values": list(self.values)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if state_dict.get("key") == self.key:
            self.values = list(state_dict["values"])


def fit_and_test(name: str, trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
                 net: nn.Module, test_ckpt: str = "best", measure: Measure = measure,
                 curve_key: str = "val/acc", ckpt_path: Optional[str] = None) -> StageResult:
    """Train ``module`` (continuing from ``ckpt_path`` when given), test its best (or last) weights, and
    measure ``net`` (the deployable model).

    Under a sharding strategy (FSDP) a copy of ``module`` is trained, and afterwards the full weights are
    gathered (``trainer.strategy.lightning_module_state_dict()``, on rank 0), sent to every rank and loaded into
    ``net``, which therefore stays an ordinary module that the report, the checkpoint and the export can use.
    """
    sharded = shards_parameters(trainer)
    if sharded:  # FSDP rewrites the module it trains in place: train a copy, keep the caller's networks plain
        module = copy.deepcopy(module)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    wall = time.perf_counter() - t0
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if test_ckpt == "best" and best:
        # Load the best weights into this very module, so `net` is what gets measured and saved.
        state = torch.load(best, map_location="cpu", weights_only=False)
        module.on_load_checkpoint(state)
        module.load_state_dict(state["state_dict"])
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    if sharded:
        load_student_weights(net, trainer.strategy.broadcast(trainer.strategy.lightning_module_state_dict(), src=0))
    recorded = [c.values for c in trainer.callbacks if isinstance(c, ValidationCurve) and c.key == curve_key]
    curve = (recorded[0] if recorded and recorded[0] else list(getattr(module, "val_history", []))
             or _csv_curve(trainer, curve_key))
    return measure(name, net, datamodule, test, wall, val_curve=curve, ckpt_path=best or None)


def test_only(name: str, trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
              net: nn.Module, wall_s: float, source: str, measure: Measure = measure) -> StageResult:
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    return measure(name, net, datamodule, test, wall_s, source=source)


def _maybe(d: Dict[str, Any], key: str) -> Optional[float]:
    return float(d[key]) if key in d else None


def _csv_curve(trainer: L.Trainer, key: str = "val/acc") -> List[float]:
    # Under ddp_spawn the module that logged lives in the worker processes; the CSV log is the record then.
    for logger in trainer.loggers:
        if isinstance(logger, L.pytorch.loggers.CSVLogger):
            path = Path(logger.log_dir) / "metrics.csv"
            if path.exists():
                with open(path) as f:
                    return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]
    return []
