"""Experiment trackers (``logger=wandb``, ``logger=mlflow``): one tracker run per kd-train job.

One run per job rather than one per stage: the teacher, the labels-only baseline and the student are
parts of one experiment, and a sweep compares jobs, so each job's composed config (the run's parameters),
its summary numbers (``student/acc``, ``kd_gain``, ...) and its figures belong to one run, one row of the
tracker's table. Each stage logs into that run under its own name (``teacher/train/loss``,
``student/val/acc``): the stages restart their step counts, so unprefixed names would interleave.

The config node is the Lightning logger as users know it (``_target_: lightning.pytorch.loggers.WandbLogger``
or ``MLFlowLogger`` and its arguments). The job's own logger opens the run and logs the config; each stage
gets a logger of the same class bound to that run (``experiment=`` / ``run_id=``) that prefixes its metrics
with the stage's name and leaves parameters to the job (MLflow refuses a parameter logged twice with two
values, and the stages' module settings differ).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from .report import flatten

log = logging.getLogger(__name__)

# tracker -> (the package it needs, the kd-lightning extra that installs it)
EXTRAS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def tracker_kind(node: Any) -> Optional[str]:
    """``"wandb"`` or ``"mlflow"`` for a logger node whose target is (a subclass of) Lightning's WandbLogger or
    MLFlowLogger; None for any other logger."""
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    target = node.get("_target_") if isinstance(node, (DictConfig, dict)) else None
    if not target:
        return None
    try:
        cls = get_class(str(target))
    except Exception:  # not a class, or not importable: instantiate reports it
        return None
    return "wandb" if issubclass(cls, WandbLogger) else "mlflow" if issubclass(cls, MLFlowLogger) else None


def missing_tracker(logger_cfg: Optional[DictConfig]) -> Optional[str]:
    """One line naming the extra to install for the first tracker of ``logger`` whose package is missing."""
    import importlib.util

    for name, node in (logger_cfg or {}).items():
        kind = tracker_kind(node)
        if kind is None:
            continue
        package, extra = EXTRAS[kind]
        if importlib.util.find_spec(package) is None:
            return (f"logger={kind} ({name}) needs the {package} package, which is not installed; install it with "
                    f"pip install 'kd-lightning[{extra}]', or choose another logger (logger=csv)")
    return None


class StageRun:
    """Mixed into a tracker's logger class for one stage: metrics under ``<stage>/``, no parameters."""

    LOGGER_JOIN_CHAR = "/"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the job's logger logged the whole composed config once


def run_names(cfg: DictConfig) -> Tuple[str, Optional[str]]:
    """The run's name and group: the run directory's name; in a multirun ``<sweep dir>/<job>`` and the sweep's
    directory name as the group."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    out = Path(str(cfg.paths.output_dir))
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"{out.parent.name}/{out.name}", out.parent.name
    return out.name, None


def config_params(cfg: DictConfig) -> Dict[str, Any]:
    """The composed config as flat parameters (``distill/temperature``; lists kept as values), resolved where
    it resolves (code that composed the config without Hydra's runtime may leave ``${hydra:...}`` open)."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation only a Hydra run can resolve
        config = OmegaConf.to_container(cfg, resolve=False)

    def walk(node: Any, prefix: str) -> Dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix[:-1]: node}
        out: Dict[str, Any] = {}
        for key, value in node.items():
            out.update(walk(value, f"{prefix}{key}/"))
        return out

    return walk(config, "")


class JobTrackers:
    """The tracker runs of one kd-train job, opened at the first stage and shared by every stage."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.nodes = {str(n): (k, node) for n, node in (cfg.get("logger") or {}).items()
                      if node is not None and (k := tracker_kind(node)) is not None}
        self.jobs: Dict[str, Any] = {}  # name -> the job's own logger (it holds the run)

    def handles(self, name: str) -> bool:
        return name in self.nodes

    def job_logger(self, name: str) -> Any:
        if name not in self.jobs:
            kind, node = self.nodes[name]
            run_name, group = run_names(self.cfg)
            extra: Dict[str, Any] = {}
            if kind == "wandb":
                extra = {"name": node.get("name") or run_name, "group": node.get("group") or group}
            else:
                extra = {"run_name": node.get("run_name") or run_name}
                uri = str(node.get("tracking_uri") or "")
                if uri.startswith("sqlite:///"):  # SQLite makes the file, not its folder
                    Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            logger = instantiate(node, **extra)
            logger.log_hyperparams(config_params(self.cfg))  # opens the run
            self.jobs[name] = logger
        return self.jobs[name]

    def stage_logger(self, name: str, stage: str) -> Any:
        """A logger of the node's class, bound to the job's run, that names its metrics ``<stage>/...``."""
        kind, node = self.nodes[name]
        job = self.job_logger(name)
        cls = get_class(str(node._target_))
        stage_cls = type(f"{cls.__name__}Stage", (StageRun, cls), {})
        kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
        kwargs["prefix"] = stage
        if kind == "wandb":
            kwargs["experiment"] = job.experiment
        else:
            kwargs["run_id"] = job.run_id
        return stage_cls(**kwargs)

    def finish(self, summary: Dict[str, Any], out: Path) -> None:
        """Log the summary's numbers and figures (and, to MLflow, summary.json/.md) and close every run."""
        numbers = {k: float(v) for k, v in flatten(summary).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        figures = sorted(out.glob("*.png"))
        for name, logger in self.jobs.items():
            kind = self.nodes[name][0]
            if kind == "wandb":
                logger.experiment.summary.update(numbers)
                for path in figures:
                    logger.log_image(key=f"figures/{path.stem}", images=[str(path)])
                logger.experiment.finish()
            else:
                logger.log_metrics(numbers)
                for path in figures + [p for p in (out / "summary.json", out / "summary.md") if p.is_file()]:
                    logger.experiment.log_artifact(logger.run_id, str(path))
                logger.finalize("success")
        self.jobs.clear()

    def close_failed(self) -> None:
        """Mark every open run failed (the job raised)."""
        for name, logger in self.jobs.items():
            try:
                if self.nodes[name][0] == "wandb":
                    logger.experiment.finish(exit_code=1)
                else:
                    logger.finalize("failed")
            except Exception as err:  # never hide the job's own error behind the tracker's
                log.warning("could not close the %s run: %s", name, err)
        self.jobs.clear()

