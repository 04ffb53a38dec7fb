"""The kd-train process: teacher (given, cached or trained) -> labels-only baseline -> student -> report.

:func:`run` reads as the process: each step instantiates one config node and hands built objects
(networks, a data module, a module, a Trainer) to the stage functions of :mod:`.stage`.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from .. import io
from ..losses import CE, Loss, TokenKD
from ..teacher import load_teacher
from .build import build_callbacks, build_datamodule, build_loggers, build_loss, build_module_factory, build_net
from .checks import teacher_cache_root
from .errors import ConfigError, root_cause
from .interrupt import stop_if_received
from .report import write_report
from .stage import Measure, StageResult, count_params, fit_and_test, measure, test_only

log = logging.getLogger(__name__)
TASKS = ("classification", "causal_lm")
CAUSAL_LM = "causal_lm"
ModuleFactory = Callable[..., L.LightningModule]


class Stages:
    """Builds each stage's Trainer (own checkpoint and log directories) from ``trainer``/``callbacks``/``logger``."""

    def __init__(self, cfg: DictConfig, measure: Measure = measure, curve_key: str = "val/acc", trackers: Any = None):
        self.trainer_cfg, self.callbacks_cfg, self.logger_cfg = cfg.trainer, cfg.get("callbacks"), cfg.get("logger")
        self.trackers = trackers  # the job's experiment-tracker runs (logger=wandb|mlflow), shared by the stages
        self.out_dir = Path(cfg.paths.output_dir)
        self.test_ckpt = str(cfg.get("test_ckpt", "best"))
        self.resume = bool(cfg.get("resume", False))
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
        from .resume import InterruptCheckpoint

        callbacks.append(InterruptCheckpoint(str(stage_dir / "checkpoints")))  # SIGTERM: a resumable checkpoint
        return instantiate(self.trainer_cfg, **overrides)

    def fit(self, name: str, module: L.LightningModule, datamodule: L.LightningDataModule, net: nn.Module,
            max_epochs: Optional[int] = None, max_steps: Optional[int] = None) -> StageResult:
        from . import resume

        stage_dir = self.out_dir / name
        if self.resume:
            done = resume.finished_stage(stage_dir, net)
            if done is not None:
                return done
        ckpt = resume.interrupted_checkpoint(stage_dir) if self.resume else None
        log.info("stage %s: %s %s (%s parameters)", name, "resuming" if ckpt else "training", type(net).__name__,
                 f"{count_params(net):,}")
        with keep_dtype(net):
            result = fit_and_test(name, self.trainer(name, max_epochs, max_steps), module, datamodule, net,
                                  self.test_ckpt, self.measure, self.curve_key, ckpt_path=ckpt)
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


def config_hash(*nodes: Any) -> str:
    blob = json.dumps([OmegaConf.to_container(n, resolve=True) if isinstance(n, DictConfig) else n
                       for n in nodes], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_classes(net: nn.Module, datamodule: L.LightningDataModule, role: str, num_classes: int) -> None:
    """One forward pass on a training batch: the output width must equal the data's class count."""
    from ..batch import unpack

    x = unpack(next(iter(datamodule.train_dataloader()))).x[:2]
    was = net.training
    net.eval()
    with torch.no_grad():
        out = net(x)
    net.train(was)
    if out.ndim != 2 or out.shape[-1] != num_classes:
        raise ConfigError(
            f"the {role} outputs shape {tuple(out.shape)} but the data has {num_classes} classes; "
            f"build it with num_classes={num_classes} (its config uses ${{data.num_classes}}), or pick a "
            f"{role} checkpoint trained on this data")


def labels_only(make_module: ModuleFactory, net: nn.Module, task: str = "classification") -> L.LightningModule:
    """The module of the teacher and baseline stages: cross-entropy on labels, no teacher."""
    from .lm import labels_only_loss

    return make_module(student=net, teacher=None, loss=labels_only_loss() if task == CAUSAL_LM else CE())


# --------------------------------------------------------------------------------------- the stages
def teacher_cache_dir(cfg: DictConfig) -> Path:
    """``<cache>/teachers/<key>``: the key covers everything that changes the trained teacher (see
    :mod:`.teacher_store`)."""
    from .teacher_store import teacher_key

    return Path(cfg.paths.cache_dir) / "teachers" / teacher_key(cfg)


def obtain_teacher(cfg: DictConfig, datamodule: L.LightningDataModule, stages: Stages,
                   make_module: ModuleFactory) -> Tuple[nn.Module, StageResult]:
    """Load the teacher from teacher.ckpt_path, or from this machine's cache, or train it.

    A cached teacher is used only when its checkpoint matches the SHA-256 recorded beside it; otherwise
    it is trained again (``teacher.source: "rebuilt (<why>)"``). Processes that need the same uncached
    teacher take turns on the cache entry's lock, so it is trained once.
    """
    from . import teacher_store

    num_classes = int(cfg.data.num_classes)
    given = cfg.teacher.get("ckpt_path")
    use_cache = bool(cfg.teacher_fit.get("use_cache", True)) and not cfg.trainer.get("fast_dev_run")
    t0 = time.perf_counter()
    if cfg.teacher_fit.get("seed") is not None and not given:
        # One teacher for runs of several seeds (a fair method table): its init and data order use this seed.
        L.seed_everything(int(cfg.teacher_fit.seed), workers=True)
    net = build_net(cfg.teacher, "teacher")
    if given or cfg.teacher_fit.max_epochs == 0:  # a given checkpoint, or pretrained weights: test them as they are
        check_classes(net, datamodule, "teacher", num_classes)
        module = labels_only(make_module, net)
        result = stages.test("teacher", module, datamodule, net, time.perf_counter() - t0,
                             "checkpoint" if given else "pretrained")
        if given:
            result.ckpt_path = str(given)
        return net, result
    if not use_cache:
        check_classes(net, datamodule, "teacher", num_classes)
        result = stages.fit("teacher", labels_only(make_module, net), datamodule, net, cfg.teacher_fit.max_epochs)
        result.source = "trained"
        return net, result

    cache = teacher_cache_dir(cfg)
    cached_ckpt = cache / "teacher.ckpt"

    def from_cache() -> Tuple[Optional[nn.Module], str]:
        ok, why = teacher_store.check_entry(cache)
        if not ok:
            return None, why
        try:
            return load_teacher(cached_ckpt, build_net(cfg.teacher, "teacher")), ""
        except Exception as err:  # matches its digest yet does not load: e.g. written by another version
            log.warning("cached teacher %s does not load (%s)", cached_ckpt, root_cause(err))
            return None, "cache unreadable"

    cached, why = from_cache()
    if cached is None:
        timeout = float(cfg.teacher_fit.get("lock_timeout_s") or 24 * 3600)
        with teacher_store.entry_lock(cache, timeout_s=timeout):
            cached, why_now = from_cache()  # another process may have trained it while this one waited
            if cached is None:
                why = why or why_now
                if why:
                    log.warning("cached teacher %s is not usable (%s): training it again", cached_ckpt, why)
                check_classes(net, datamodule, "teacher", num_classes)
                result = stages.fit("teacher", labels_only(make_module, net), datamodule, net,
                                    cfg.teacher_fit.max_epochs)
                result.source = f"rebuilt ({why})" if why else "trained"
                teacher_store.write_entry(
                    cache, {"state_dict": {f"student.{k}": v for k, v in net.state_dict().items()}},
                    {"acc": result.acc, "val_curve": result.val_curve,
                     "teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
                     "key_parts": teacher_store.teacher_key_parts(cfg)})
                result.ckpt_path = str(cached_ckpt)
                return net, result
    net = cached
    check_classes(net, datamodule, "teacher", num_classes)
    module = labels_only(make_module, net)
    result = stages.test("teacher", module, datamodule, net, time.perf_counter() - t0, "cache")
    result.val_curve = teacher_store.read_meta(cache).get("val_curve", [])
    result.ckpt_path = str(cached_ckpt)
    return net, result


def distill_student(cfg: DictConfig, teacher: nn.Module, loss: Loss, datamodule: L.LightningDataModule,
                    stages: Stages, make_module: ModuleFactory, stage: str = "student") -> Tuple[nn.Module, StageResult]:
    net = build_net(cfg.student, "student")
    batch_transform = instantiate(cfg.distill.batch_transform) if cfg.distill.get("batch_transform") else None
    data = with_transfer_set(datamodule, loss)  # the teacher and the baseline never see it
    extra: Dict[str, Any] = {"batch_transform": batch_transform} if batch_transform is not None else {}
    if isinstance(loss, TokenKD):
        from .lm import cache_summary, self_generated, token_cache_datamodule

        cached = token_cache_datamodule(cfg, teacher, loss, data)
        if cached is not None:
            extra["teacher_outputs"] = True
        else:  # distill.on_policy / distill.sequence_kd: sequences the models write
            data, policy = self_generated(cfg, teacher, data)
            extra.update(policy)
    else:
        cached = teacher_cache_datamodule(cfg, teacher, loss, data, batch_transform is not None)
    if cached is not None:  # offline KD: no teacher runs during training, the batches carry its outputs
        data, teacher = cached, None
    module = make_module(student=net, teacher=teacher, loss=loss, **extra)
    result = stages.fit(stage, module, data, net)
    if isinstance(loss, TokenKD) and cached is not None:
        result.teacher_cache = {**cache_summary(cached), "tail": loss.topk_tail}
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


_LOADER_KEYS = ("batch_size", "eval_batch_size", "num_workers", "pin_memory", "persistent_workers", "return_index",
                "num_train")


def check_teacher_cache(cfg: DictConfig, loss: Loss, has_batch_transform: bool) -> None:
    """What ``distill.teacher_cache`` cannot serve, refused before any stage trains."""
    from ..losses import LogitMSE

    if teacher_cache_root(cfg) is None:
        return
    name = cfg.distill.get("name", type(loss).__name__)
    if loss.teacher_taps:
        raise ConfigError(f"distill.teacher_cache stores teacher logits only, but {name} reads teacher features "
                          f"({', '.join(loss.teacher_taps)}); set distill.teacher_cache=false")
    if has_batch_transform:
        raise ConfigError("distill.batch_transform changes the inputs at every step, so the teacher must label them "
                          "online (consistent teaching); set distill.teacher_cache=false, or pick a recipe without "
                          "it (e.g. experiment=mnist1d_kd)")
    parts = list(getattr(loss, "losses", [loss]))
    if cfg.distill.get("teacher_cache_top_k") and any(isinstance(o, LogitMSE) for o in parts):
        raise ConfigError("LogitMSE matches raw teacher logits, which top-k storage does not keep; "
                          "set distill.teacher_cache_top_k=null")


def teacher_cache_datamodule(cfg: DictConfig, teacher: nn.Module, loss: Loss,
                             datamodule: L.LightningDataModule, has_batch_transform: bool = False):
    """``distill.teacher_cache``: wrap ``datamodule`` so batches carry the teacher's stored logits (or None)."""
    root = teacher_cache_root(cfg)
    if root is None:
        return None
    from ..cache import TeacherOutputsDataModule, RandomTransformError, TeacherOutputsError

    check_teacher_cache(cfg, loss, has_batch_transform)
    top_k = cfg.distill.get("teacher_cache_top_k")
    data_cfg = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k not in _LOADER_KEYS}
    cached = TeacherOutputsDataModule(
        datamodule, teacher, root, data_config=data_cfg, fp16=bool(cfg.distill.get("teacher_cache_fp16", False)),
        top_k=int(top_k) if top_k else None,
        allow_random_transform=bool(cfg.distill.get("teacher_cache_allow_random_transform", False)))
    t0 = time.perf_counter()
    try:
        caches = cached.prepare_outputs()
    except (RandomTransformError, TeacherOutputsError) as err:
        raise ConfigError(str(err)) from None
    log.info("teacher outputs cached in %.1fs: %s", time.perf_counter() - t0, ", ".join(map(repr, caches.values())))
    return cached


def save_student(cfg: DictConfig, net: nn.Module, name: str) -> str:
    """The deployable student alone (no teacher, no adapters) plus the config that rebuilds it."""
    path = Path(cfg.paths.output_dir) / f"{name}.ckpt"
    io.torch_save({"state_dict": {f"student.{k}": v for k, v in net.state_dict().items()},
                   "kd_config": OmegaConf.to_container(cfg, resolve=True)}, path)
    return str(path)


# ------------------------------------------------------------------------------------------- the run
def primary_process() -> bool:
    """Rank 0 of a distributed run (or the only process). Under ``trainer=ddp``/``ddp_cpu`` every rank runs
    the whole process, with identical results; only this one writes the run's files."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0) == 0


def validate(cfg: DictConfig) -> Loss:
    """Checks that need no data: anything wrong here is reported before any training."""
    task = cfg.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is not known; use one of {', '.join(TASKS)} (experiment=lm_pydoc sets causal_lm)")
    given = cfg.teacher.get("ckpt_path")
    if given and not Path(given).is_file():
        raise ConfigError(f"teacher.ckpt_path={given!r} does not exist; point it at a teacher .ckpt, "
                          "or drop it (teacher.ckpt_path=null) to train a teacher")
    loss = build_loss(cfg.distill)
    if task != CAUSAL_LM and isinstance(loss, TokenKD):
        raise ConfigError("distill=token_kd distills language models; run it with experiment=lm_pydoc (task=causal_lm) "
                          "and an LM data set (data=lm_pydoc | lm_text | lm_jsonl)")
    if task == CAUSAL_LM and not isinstance(loss, TokenKD):
        raise ConfigError(f"distill={cfg.distill.get('name')} is a classifier method; language models distill with "
                          "distill=token_kd (distill.divergence=forward|reverse|jsd|skew_forward|skew_reverse|tvd)")
    if task == CAUSAL_LM:
        from .lm import check_token_cache

        check_token_cache(cfg, loss)
    else:
        check_teacher_cache(cfg, loss, cfg.distill.get("batch_transform") is not None)
    return loss


def run(cfg: DictConfig) -> Dict[str, Any]:
    """Run the whole process and return the summary (also written to the run directory); the experiment
    trackers of ``logger`` get one run for the job, closed with the summary (or marked failed)."""
    from .checks import check_train_config
    from .trackers import JobTrackers

    check_train_config(cfg)
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
    task = cfg.get("task", "classification")
    if task == CAUSAL_LM:
        from . import lm

        teacher_cfg = lm.teacher_view(cfg)  # before instantiation resolves cfg's interpolations in place
    loss = validate(cfg)
    make_module = build_module_factory(cfg.module)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.data, return_index=loss.needs_index)
    try:
        datamodule.setup("fit")
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    if task == CAUSAL_LM:
        lm.check_lm(build_net(cfg.student, "student"), datamodule, "student")
        make_module = lm.module_factory(cfg.module, datamodule.tokenizer)
        sampling = OmegaConf.to_container(cfg.get("samples") or {}, resolve=True)
        stages = Stages(cfg, lm.MeasureLM(datamodule.tokenizer, seed=int(cfg.seed), **sampling), curve_key="val/ppl",
                        trackers=trackers)
        teacher, teacher_res = lm.obtain_teacher(cfg, datamodule, stages, teacher_cfg)
        scorer = teacher  # scores every model's own samples after the student stage
    else:
        check_classes(build_net(cfg.student, "student"), datamodule, "student", int(cfg.data.num_classes))
        stages = Stages(cfg, trackers=trackers)
        teacher, teacher_res = obtain_teacher(cfg, datamodule, stages, make_module)
    baseline_res: Optional[StageResult] = None
    net = None
    if cfg.baseline.get("enabled", True):
        L.seed_everything(cfg.seed, workers=True)
        net = build_net(cfg.student, "student")
        baseline_res = stages.fit("baseline", labels_only(make_module, net, task), datamodule, net)
    baseline_net = net
    # Teacher-assistant chain (TAKD): teacher -> assistant 1 -> ... -> student.
    links = []
    for i, preset in enumerate(cfg.get("assistants") or []):
        link_cfg = relink(cfg, teacher_model=cfg.teacher if i == 0 else links[-1][0], student_model=preset_config(preset))
        L.seed_everything(cfg.seed, workers=True)
        teacher, res = distill_student(link_cfg, teacher, validate(link_cfg), datamodule, stages, make_module,
                                       stage=f"assistant{i + 1}")
        res.source = str(preset)
        links.append((link_cfg.student, res))
    student_cfg = relink(cfg, teacher_model=links[-1][0], student_model=cfg.student) if links else cfg
    L.seed_everything(cfg.seed, workers=True)
    student, student_res = distill_student(student_cfg, teacher, validate(student_cfg) if links else loss,
                                           datamodule, stages, make_module)
    # Born-again generations: the student of generation k teaches an identical student k+1.
    generations = [student_res]
    for g in range(2, int(cfg.get("generations") or 1) + 1):
        gen_cfg = relink(cfg, teacher_model=cfg.student, student_model=cfg.student)
        L.seed_everything(cfg.seed + g, workers=True)
        student, student_res = distill_student(gen_cfg, student, validate(gen_cfg), datamodule, stages, make_module,
                                               stage=f"student_gen{g}")
        generations.append(student_res)
    if task == CAUSAL_LM:
        lm.score_own_samples(cfg, scorer, datamodule, {"teacher": (scorer, teacher_res),
                                                       "baseline": (baseline_net, baseline_res),
                                                       "student": (student, student_res)})
    primary = primary_process()
    student_res.ckpt_path = save_student(cfg, student, "student") if primary else None
    extra: Dict[str, Any] = {"distill": {"name": cfg.distill.get("name"), "temperature": cfg.distill.get("temperature")},
                             "data": cfg.data.get("_target_", "").rsplit(".", 1)[-1], "seed": cfg.seed}
    if task == CAUSAL_LM:
        extra["distill"]["divergence"] = cfg.distill.get("divergence")
        extra["task"] = task
        extra["prompts"] = list(stages.measure.prompts)
        # Nested, so that a sweep table (summary.json flattened) does not take the path for a swept setting.
        hf_dir = Path(cfg.paths.output_dir) / "student_hf"
        extra["export"] = {"student_hf": lm.save_student_hf(student, datamodule.tokenizer, hf_dir) if primary else None}
        if primary and (cfg.student.get("lora") or {}).get("export_merged"):  # the adapters merged into the base
            extra["export"]["student_hf_merged"] = lm.save_student_hf(
                student, datamodule.tokenizer, hf_dir.with_name("student_hf_merged"), merged=True)
    if links:
        extra["assistants"] = [r.to_dict() for _, r in links]
    if len(generations) > 1:
        extra["generations"] = [r.to_dict() for r in generations]
    return write_report(Path(cfg.paths.output_dir), teacher_res, baseline_res, student_res, extra, task=task,
                        write=primary)


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
