"""The model families kd-train, kd-eval and kd-export serve, one task object each (:class:`.base.Task`):
:class:`.classification.Classification` and :class:`.causal_lm.CausalLM`."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Type

from omegaconf import DictConfig

from ..checks import check_task_name
from .base import ModuleFactory, Task
from .causal_lm import CausalLM
from .classification import Classification

TASKS: Dict[str, Type[Task]] = {t.name: t for t in (Classification, CausalLM)}


def task_names() -> List[str]:
    return list(TASKS)


def task_for(name: Any, cfg: Optional[DictConfig] = None) -> Task:
    """The task object named ``name`` (a config's ``task`` key), reading its settings from ``cfg``."""
    check_task_name(name, TASKS)
    return TASKS[name](cfg)


__all__ = ["Task", "ModuleFactory", "Classification", "CausalLM", "TASKS", "task_for", "task_names"]
