"""The kd-train process: teacher (given, stored or trained) -> labels-only baseline -> student -> report.

:func:`run` reads as the process, the same for every model family: the config is checked in full
(:mod:`.checks`) before any stage, then each step builds objects from one config node and hands them to
the stages; what differs between families comes from the run's task object (:mod:`.tasks`).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from .. import io
from ..losses import Loss
from . import teacher_store
from .build import build_datamodule, build_loss, build_net
from .checks import check_given_teacher, check_train_config
from .errors import ConfigError
from .stage import StageResult
from .stages import Stages, primary_process
from .tasks import ModuleFactory, Task, task_for
from .teacher_stage import TeacherPlan, obtain_trained

log = logging.getLogger(__name__)


def checked_loss(cfg: DictConfig, task: Task) -> Loss:
    """The student's loss from ``distill``, refused (one line) when this task's checks find it wrong."""
    loss = build_loss(cfg.distill)
    task.check_config(cfg, loss)
    return loss


def stages_for(cfg: DictConfig, task: Task, datamodule: L.LightningDataModule, trackers: Any = None) -> Stages:
    return Stages(cfg.trainer, Path(cfg.paths.output_dir), callbacks_cfg=cfg.get("callbacks"),
                  logger_cfg=cfg.get("logger"), test_ckpt=str(cfg.get("test_ckpt", "best")),
                  resume=bool(cfg.get("resume", False)), measure=task.measure(datamodule), curve_key=task.curve_key,
                  trackers=trackers)


def teacher_plan(cfg: DictConfig, task: Task, datamodule: L.LightningDataModule) -> TeacherPlan:
    """Where the teacher comes from, read from the run's config."""
    use_store = bool(cfg.teacher_fit.get("use_store", True)) and not cfg.trainer.get("fast_dev_run")
    extra = task.store_key_parts(datamodule)
    teacher_cfg = cfg.teacher
    return TeacherPlan(
        build=lambda: build_net(teacher_cfg, "teacher"), budget=task.teacher_budget(cfg),
        given=str(cfg.teacher.ckpt_path) if cfg.teacher.get("ckpt_path") else None,
        pretrained=task.pretrained_teacher(cfg),
        entry=teacher_store.entry_dir(cfg, extra) if use_store else None,
        record={"teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
                "key_parts": {**teacher_store.teacher_key_parts(cfg), **extra}},
        lock_timeout_s=float(cfg.teacher_fit.get("lock_timeout_s") or 24 * 3600),
        seed=cfg.teacher_fit.get("seed"))


def baseline_plan(cfg: DictConfig, task: Task, datamodule: L.LightningDataModule) -> TeacherPlan:
    """The labels-only baseline: the student architecture on the trainer's budget, kept in the teacher store
    under a key without ``distill`` (so every job of a sweep over distillation settings shares it)."""
    use_store = bool(cfg.baseline.get("use_store", True)) and not cfg.trainer.get("fast_dev_run")
    extra = task.store_key_parts(datamodule)
    student_cfg = cfg.student
    return TeacherPlan(
        build=lambda: build_net(student_cfg, "student"), budget={}, role="baseline",
        entry=teacher_store.entry_dir(cfg, extra, role="baseline") if use_store else None,
        record={"student": OmegaConf.to_container(cfg.student, resolve=True),
                "key_parts": {**teacher_store.baseline_key_parts(cfg), **extra}},
        lock_timeout_s=float(cfg.teacher_fit.get("lock_timeout_s") or 24 * 3600))


def new_transform(transform_cfg: Optional[DictConfig]) -> Any:
    """A fresh ``distill.batch_transform`` for one student stage (None when the recipe has none)."""
    return instantiate(transform_cfg) if transform_cfg else None


# --------------------------------------------------------------------------------------- the stages
def distill_student(net: nn.Module, teacher: nn.Module, loss: Loss, datamodule: L.LightningDataModule,
                    stages: Stages, make_module: ModuleFactory, task: Task, batch_transform: Any = None,
                    stage: str = "student") -> Tuple[nn.Module, StageResult]:
    """Distill ``net`` from ``teacher``: live, or from the teacher's stored outputs (``distill.teacher_outputs``;
    then no teacher runs during training and the batches carry its outputs)."""
    data = with_transfer_set(datamodule, loss)  # the teacher and the baseline never see it
    extra: Dict[str, Any] = {"batch_transform": batch_transform} if batch_transform is not None else {}
    stored = task.teacher_outputs(teacher, loss, data)
    if stored is not None:
        data, teacher = stored, None
        extra.update(task.teacher_outputs_module_args())
    else:
        data, more = task.student_data(teacher, data)
        extra.update(more)
    module = make_module(student=net, teacher=teacher, loss=loss, **extra)
    result = stages.fit(stage, module, data, net)
    if stored is not None:
        task.describe_teacher_outputs(result, stored, loss)
    return net, result


def with_transfer_set(datamodule: L.LightningDataModule, loss: Loss) -> L.LightningDataModule:
    """The student's data: ``datamodule`` plus its transfer set (unlabeled samples), when it has one."""
    from ..data.transfer import TransferDataModule, has_transfer_set

    if not has_transfer_set(datamodule):
        return datamodule
    if loss.needs_index:
        log.warning("%s keeps a per-sample memory bank of the labeled training set, so the student trains without "
                    "the transfer set (set data.transfer_samples=0 to silence this)", type(loss).__name__)
        return datamodule
    return TransferDataModule(datamodule)


def save_student(cfg: DictConfig, net: nn.Module, name: str) -> str:
    """The deployable student alone (no teacher, no adapters) plus the config that rebuilds it."""
    path = Path(cfg.paths.output_dir) / f"{name}.ckpt"
    state = {f"student.{k}": v for k, v in net.state_dict().items()}
    # The digest travels with the weights: kd-eval, kd-export and teacher.ckpt_path refuse a changed copy.
    io.torch_save({"state_dict": state, "weights_sha256": io.state_dict_sha256(state),
                   "kd_config": OmegaConf.to_container(cfg, resolve=True)}, path)
    return str(path)


# ------------------------------------------------------------------------------------------- the run
def run(cfg: DictConfig) -> Dict[str, Any]:
    """Run the whole process and return the summary (also written to the run directory); the experiment
    trackers of ``logger`` get one run for the job, closed with the summary (or marked failed)."""
    from .trackers import JobTrackers

    check_train_config(cfg)
    check_given_teacher(cfg)
    trackers = JobTrackers(cfg)
    try:
        summary = run_stages(cfg, trackers)
    except BaseException:
        trackers.close_failed()
        raise
    if primary_process():
        trackers.finish(summary, Path(cfg.paths.output_dir))
    return summary


def run_stages(cfg: DictConfig, trackers: Any = None) -> Dict[str, Any]:
    """Teacher, baseline, student(s) and the report (the body of :func:`run`, which checks the config first)."""
    task = task_for(cfg.get("task"), cfg)
    loss = checked_loss(cfg, task)
    transform_cfg = cfg.distill.get("batch_transform")
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.data, return_index=loss.needs_index)
    try:
        datamodule.setup("fit")
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    # The teacher's data, and the student's (the same unless the student has a tokenizer of its own).
    student_data = task.student_datamodule(datamodule)
    task.check_network(build_net(cfg.student, "student"), student_data, "student")
    make_teacher_module = task.module_factory(cfg.module, datamodule)
    make_module = task.module_factory(cfg.module, student_data) if student_data is not datamodule else make_teacher_module
    stages = stages_for(cfg, task, datamodule, trackers)
    teacher, teacher_res = obtain_trained(teacher_plan(cfg, task, datamodule), task, datamodule, stages,
                                          make_teacher_module)
    datamodule = student_data  # every later stage trains the student architecture
    scorer = teacher  # the first teacher scores every model's own samples after the student stage
    baseline_res: Optional[StageResult] = None
    baseline_net = None
    if cfg.baseline.get("enabled", True):
        L.seed_everything(cfg.seed, workers=True)
        baseline_net, baseline_res = obtain_trained(baseline_plan(cfg, task, datamodule), task, datamodule, stages,
                                                    make_module)
    # Teacher-assistant chain (TAKD): teacher -> assistant 1 -> ... -> student.
    links = []
    for i, preset in enumerate(cfg.get("assistants") or []):
        link_cfg = relink(cfg, teacher_model=cfg.teacher if i == 0 else links[-1][0], student_model=preset_config(preset))
        L.seed_everything(cfg.seed, workers=True)
        teacher, res = distill_student(build_net(link_cfg.student, "student"), teacher, checked_loss(link_cfg, task),
                                       datamodule, stages, make_module, task, new_transform(transform_cfg),
                                       stage=f"assistant{i + 1}")
        res.source = str(preset)
        links.append((link_cfg.student, res))
    student_model = relink(cfg, teacher_model=links[-1][0], student_model=cfg.student).student if links else cfg.student
    L.seed_everything(cfg.seed, workers=True)
    student, student_res = distill_student(build_net(student_model, "student"), teacher,
                                           checked_loss(cfg, task) if links else loss, datamodule, stages,
                                           make_module, task, new_transform(transform_cfg))
    # Born-again generations: the student of generation k teaches an identical student k+1.
    generations = [student_res]
    for g in range(2, int(cfg.get("generations") or 1) + 1):
        gen_model = relink(cfg, teacher_model=cfg.student, student_model=cfg.student).student
        L.seed_everything(cfg.seed + g, workers=True)
        student, student_res = distill_student(build_net(gen_model, "student"), student, checked_loss(cfg, task),
                                               datamodule, stages, make_module, task, new_transform(transform_cfg),
                                               stage=f"student_gen{g}")
        generations.append(student_res)
    task.after_students(scorer, datamodule, {"teacher": (scorer, teacher_res), "baseline": (baseline_net, baseline_res),
                                             "student": (student, student_res)})
    primary = primary_process()
    student_res.ckpt_path = save_student(cfg, student, "student") if primary else None
    extra: Dict[str, Any] = {"distill": {"name": cfg.distill.get("name"), "temperature": cfg.distill.get("temperature")},
                             "data": cfg.data.get("_target_", "").rsplit(".", 1)[-1], "seed": cfg.seed}
    for key, value in task.report_extra(student, datamodule, cfg.paths.output_dir, primary).items():
        extra[key] = {**extra[key], **value} if isinstance(extra.get(key), dict) else value
    if links:
        extra["assistants"] = [r.to_dict() for _, r in links]
    if len(generations) > 1:
        extra["generations"] = [r.to_dict() for r in generations]
    return task.write_report(Path(cfg.paths.output_dir), teacher_res, baseline_res, student_res, extra, write=primary)


def preset_config(name: str) -> DictConfig:
    """The model preset ``name`` (as in ``student=<name>``), composed with Hydra's own config search."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        from hydra import initialize_config_dir

        from .confdir import CONFIG_DIR

        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=[f"student={name}"]).student
    try:
        return compose("train", overrides=[f"student={name}"]).student
    except Exception as err:
        from .errors import root_cause

        raise ConfigError(f"unknown model preset {name!r} in assistants: {root_cause(err)}") from None


def relink(cfg: DictConfig, teacher_model: DictConfig, student_model: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose teacher and student are the given presets (one link of a chain)."""
    link = copy.deepcopy(cfg)
    with open_dict(link):
        link.teacher = OmegaConf.to_container(teacher_model)
        link.student = OmegaConf.to_container(student_model)
        link.teacher.ckpt_path = None
        link.student.ckpt_path = None
    return link
