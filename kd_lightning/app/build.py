"""Config nodes to objects: every builder here is one ``instantiate`` plus the one-line error a user sees."""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..losses import Compose, Loss
from ..teacher import load_teacher
from .errors import ConfigError, root_cause


def build_loss(distill_cfg: DictConfig) -> Loss:
    """Every entry of ``distill.losses``, summed (one entry is returned as it is)."""
    entries = distill_cfg.get("losses") or {}
    try:
        losses = [instantiate(v) for v in entries.values() if v is not None]
    except Exception as err:
        raise ConfigError(f"bad distill config ({distill_cfg.get('name')}): {root_cause(err)}") from None
    if not losses:
        raise ConfigError("distill.losses is empty: choose a method, e.g. distill=kd")
    return losses[0] if len(losses) == 1 else Compose(losses)


def build_net(model_cfg: DictConfig, role: str) -> nn.Module:
    """The ``teacher`` or ``student`` network (``<role>.net``), loaded from ``<role>.ckpt_path`` when set."""
    try:
        net = instantiate(model_cfg.net)
    except Exception as err:  # hydra wraps constructor errors; keep the first useful line
        raise ConfigError(f"could not build the {role} network from {role}.net: {root_cause(err)}") from None
    if model_cfg.get("ckpt_path"):
        try:
            net = load_teacher(model_cfg.ckpt_path, net)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"{role}.ckpt_path: {err}") from None
    return net


def build_datamodule(data_cfg: DictConfig, return_index: bool = False) -> L.LightningDataModule:
    kwargs = OmegaConf.to_container(data_cfg, resolve=True)
    kwargs.pop("num_train", None)  # informational (losses size memory banks with it)
    if return_index:
        kwargs["return_index"] = True
    try:
        return instantiate(kwargs)
    except Exception as err:
        raise ConfigError(f"could not build the data module from data: {root_cause(err)}") from None


def build_module_factory(module_cfg: DictConfig) -> Callable[..., L.LightningModule]:
    """``module`` is a ``_partial_`` node: the stages add ``student``, ``teacher`` and ``loss``."""
    try:
        return instantiate(module_cfg)
    except Exception as err:
        raise ConfigError(f"bad module config: {root_cause(err)}") from None


def build_callbacks(callbacks_cfg: Optional[DictConfig], checkpoint_dir: str,
                    progress_bar: bool = True) -> List[L.Callback]:
    callbacks: List[L.Callback] = []
    for name, cb_cfg in (callbacks_cfg or {}).items():
        if cb_cfg is None or "_target_" not in cb_cfg:
            continue
        extra = {"dirpath": checkpoint_dir} if name == "model_checkpoint" else {}
        callbacks.append(instantiate(cb_cfg, **extra))
    if not progress_bar:  # a configured bar would contradict trainer.enable_progress_bar=false
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    return callbacks


def build_loggers(logger_cfg: Optional[DictConfig], stage: str) -> List[Any]:
    return [instantiate(c, version=stage) for c in (logger_cfg or {}).values() if c is not None and "_target_" in c]
