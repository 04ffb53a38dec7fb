"""What a model family supplies to the process, with the defaults every family shares.

A task supplies what differs between families, so that the process (:mod:`kd_lightning.app.pipeline`)
is written once: the labels-only loss of the teacher and baseline stages, its config checks (which live in
:mod:`kd_lightning.app.checks`), the check of a built network against the data, the module factory, the
teacher stage's budget and store key, the stored-teacher-outputs wrapper, what a stage measures, the
report, and evaluation and export of a saved student. A task reads its settings from the run's config
once, when it is made (:func:`task_for`); the stages then get built objects only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import lightning as L
from omegaconf import DictConfig
from torch import nn

from ...losses import Loss
from ..build import build_module_factory
from ..stage import Measure, StageResult

ModuleFactory = Callable[..., L.LightningModule]


class Task:
    """The defaults every family shares; a family overrides what it does differently."""

    name = ""
    curve_key = "val/acc"  # the validation metric a stage's curve follows
    lm = False  # whose report: a classifier's (accuracy) or a language model's (perplexity, bits per byte)

    def __init__(self, cfg: Optional[DictConfig] = None):
        """Read this family's settings from the run's config (None: kd-eval and kd-export, which need none)."""

    # -------------------------------------------------------------------------- checks
    def check_config(self, cfg: DictConfig, loss: Loss) -> None:
        """What this family refuses in the config (the checks live in :mod:`kd_lightning.app.checks`)."""
        raise NotImplementedError

    def check_network(self, net: nn.Module, datamodule: L.LightningDataModule, role: str) -> None:
        """A built network against the data (output width, context, vocabulary)."""
        raise NotImplementedError

    # -------------------------------------------------------------------------- modules
    def labels_only_loss(self) -> Loss:
        raise NotImplementedError

    def labels_only_module(self, make_module: ModuleFactory, net: nn.Module) -> L.LightningModule:
        """The module of the teacher and baseline stages: the labels-only loss, no teacher."""
        return make_module(student=net, teacher=None, loss=self.labels_only_loss())

    def module_factory(self, module_cfg: DictConfig, datamodule: L.LightningDataModule) -> ModuleFactory:
        return build_module_factory(module_cfg)

    # -------------------------------------------------------------------- the teacher stage
    def teacher_budget(self, cfg: DictConfig) -> Dict[str, int]:
        raise NotImplementedError

    def pretrained_teacher(self, cfg: DictConfig) -> Optional[str]:
        """Trained weights to test as they are, without a teacher stage (their path, or ""); None: train."""
        raise NotImplementedError

    def store_key_parts(self, datamodule: L.LightningDataModule) -> Dict[str, Any]:
        """What shapes this family's trained teacher beyond the config (added to the teacher store's key)."""
        return {}

    def student_datamodule(self, datamodule: L.LightningDataModule) -> L.LightningDataModule:
        """The data of the baseline and the student (set up), when they see the data otherwise than the
        teacher does (a student with another tokenizer); ``datamodule`` itself by default."""
        return datamodule

    def saved_student_data(self, cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningDataModule:
        """The data a saved student is evaluated or exported with (kd-eval, kd-export; ``cfg`` is the config
        it was trained with): ``datamodule`` itself by default."""
        return datamodule

    # -------------------------------------------------------------------- the student stage
    def measure(self, datamodule: L.LightningDataModule) -> Measure:
        raise NotImplementedError

    def teacher_outputs(self, teacher: nn.Module, loss: Loss,
                        datamodule: L.LightningDataModule) -> Optional[L.LightningDataModule]:
        """``distill.teacher_outputs``: ``datamodule`` wrapped so its batches carry the teacher's stored
        outputs (no teacher runs in the student stage), or None when the setting is off."""
        raise NotImplementedError

    def teacher_outputs_module_args(self) -> Dict[str, Any]:
        """Extra module arguments when the batches carry stored teacher outputs."""
        return {}

    def student_data(self, teacher: nn.Module,
                     datamodule: L.LightningDataModule) -> Tuple[L.LightningDataModule, Dict[str, Any]]:
        """The student stage's data and extra module arguments when the teacher runs live."""
        return datamodule, {}

    def describe_teacher_outputs(self, result: StageResult, stored: L.LightningDataModule, loss: Loss) -> None:
        """Record in the student's result what its stored teacher outputs were."""

    def after_students(self, teacher: nn.Module, datamodule: L.LightningDataModule,
                       models: Dict[str, Tuple[Optional[nn.Module], Optional[StageResult]]]) -> None:
        """Measurements that compare the finished models with the teacher."""

    # ------------------------------------------------------------------------- the report
    def report_extra(self, student: nn.Module, datamodule: L.LightningDataModule, out_dir: Any,
                     primary: bool) -> Dict[str, Any]:
        return {}

    def write_report(self, out: Any, teacher: StageResult, baseline: Optional[StageResult], student: StageResult,
                     extra: Dict[str, Any], write: bool) -> Dict[str, Any]:
        from ..report import write_report

        return write_report(Path(out), teacher, baseline, student, extra, lm=self.lm, write=write)

    # --------------------------------------------------------------- a saved student (kd-eval, kd-export)
    def evaluate(self, net: nn.Module, datamodule: L.LightningDataModule, trainer: L.Trainer) -> Tuple[Dict[str, float], str]:
        """Test metrics of a saved student and the line kd-eval prints."""
        raise NotImplementedError

    def export(self, net: nn.Module, datamodule: L.LightningDataModule, ckpt_path: Any, output: Optional[str],
               fmt: str, atol: float, rtol: float, merged: bool = False) -> Dict[str, Any]:
        """Write the saved student in a deployable form (``output``, or beside ``ckpt_path``) and check it
        (``merged``: a LoRA student's adapters merged into its base; language models only)."""
        raise NotImplementedError
