"""Classifiers (logits ``[batch, classes]``): cross-entropy on labels, accuracy, stored dense or top-k
teacher logits, ONNX or TorchScript export."""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ...losses import CE, Loss
from ..checks import (check_classes, check_classification_config, check_export_format, latency_timing,
                      teacher_outputs_root)
from ..errors import ConfigError
from ..stage import Measure, measure
from .base import Task

log = logging.getLogger(__name__)
# Data settings that change only loading, never the samples: left out of the stored outputs' key.
LOADER_KEYS = ("batch_size", "eval_batch_size", "num_workers", "pin_memory", "persistent_workers", "return_index",
               "num_train")


class Classification(Task):
    name = "classification"
    curve_key = "val/acc"

    def __init__(self, cfg: Optional[DictConfig] = None):
        super().__init__(cfg)
        classes = cfg.data.get("num_classes") if cfg is not None else None
        self.num_classes = int(classes) if classes is not None else None
        self.outputs_root = teacher_outputs_root(cfg) if cfg is not None else None
        self.timing = latency_timing(cfg) if cfg is not None else None
        if self.outputs_root is not None:
            top_k = cfg.distill.get("teacher_outputs_top_k")
            self.outputs_args = dict(
                data_config={k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
                             if k not in LOADER_KEYS},
                fp16=bool(cfg.distill.get("teacher_outputs_fp16", False)), top_k=int(top_k) if top_k else None,
                allow_random_transform=bool(cfg.distill.get("teacher_outputs_allow_random_transform", False)))

    def check_config(self, cfg: DictConfig, loss: Loss) -> None:
        check_classification_config(cfg, loss)

    def check_network(self, net: nn.Module, datamodule: L.LightningDataModule, role: str) -> None:
        num_classes = self.num_classes if self.num_classes is not None else int(datamodule.num_classes)
        check_classes(net, datamodule, role, num_classes)

    def labels_only_loss(self) -> Loss:
        return CE()

    def teacher_budget(self, cfg: DictConfig) -> Dict[str, int]:
        return {"max_epochs": int(cfg.teacher_fit.max_epochs)}

    def pretrained_teacher(self, cfg: DictConfig) -> Optional[str]:
        return "" if cfg.teacher_fit.max_epochs == 0 else None

    def measure(self, datamodule: L.LightningDataModule) -> Measure:
        return functools.partial(measure, timing=self.timing)

    def teacher_outputs(self, teacher: nn.Module, loss: Loss,
                        datamodule: L.LightningDataModule) -> Optional[L.LightningDataModule]:
        """The teacher's logits on every split, dense or top-k, stored once per (teacher weights, data, split)."""
        if self.outputs_root is None:
            return None
        from ...cache import TeacherOutputsDataModule, RandomTransformError, TeacherOutputsError

        stored = TeacherOutputsDataModule(datamodule, teacher, self.outputs_root, **self.outputs_args)
        t0 = time.perf_counter()
        try:
            stores = stored.prepare_outputs()
        except (RandomTransformError, TeacherOutputsError) as err:
            raise ConfigError(str(err)) from None
        log.info("teacher outputs stored in %.1fs: %s", time.perf_counter() - t0, ", ".join(map(repr, stores.values())))
        return stored

    def evaluate(self, net: nn.Module, datamodule: L.LightningDataModule,
                 trainer: L.Trainer) -> Tuple[Dict[str, float], str]:
        from ...classifier import ClassifierModule

        metrics = {k: float(v) for k, v in trainer.test(ClassifierModule(net), datamodule=datamodule,
                                                        verbose=False)[0].items()}
        return metrics, f"test/acc: {metrics['test/acc']:.4f}"

    def export(self, net: nn.Module, datamodule: L.LightningDataModule, ckpt_path: Path, output: Optional[str],
               fmt: str, atol: float, rtol: float, merged: bool = False) -> Dict[str, Any]:
        """One ONNX or TorchScript file (``output``, or beside the checkpoint), checked against ``net`` on 16
        test samples."""
        from ..exporters import SUFFIX, check_match, export_onnx, export_torchscript

        check_export_format(fmt, SUFFIX, "a classifier")
        if merged:
            raise ConfigError("merged=true merges a LoRA language-model student's adapters into its base; this "
                              "checkpoint's student is a classifier: drop merged=true")
        datamodule.setup("test")
        x = next(iter(datamodule.test_dataloader()))[0][:16].float()
        path = Path(output) if output else ckpt_path.with_suffix(SUFFIX[fmt])
        with torch.no_grad():
            expected = net(x).numpy()
        got = export_onnx(net, x, path) if fmt == "onnx" else export_torchscript(net, x, path)
        max_err = check_match(got, expected, atol, rtol)
        print(f"exported {path} ({fmt}); outputs match the checkpoint on {len(x)} test samples "
              f"(max abs error {max_err:.2e})")
        return {"path": str(path), "format": fmt, "max_abs_error": max_err}
