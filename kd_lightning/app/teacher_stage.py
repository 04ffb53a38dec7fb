"""The stages that train on labels alone, the same for every model family: the teacher and the labels-only
baseline. A given checkpoint or pretrained teacher weights are tested as they are; otherwise the network
comes from the teacher store (digest-checked) or is trained under the store entry's lock, so that
concurrent runs (a sweep's jobs) needing the same teacher or the same baseline train it once."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import lightning as L
from torch import nn

from ..teacher import load_teacher
from . import teacher_store
from .errors import root_cause
from .stage import StageResult
from .stages import Stages, primary_process

log = logging.getLogger(__name__)


@dataclass
class TeacherPlan:
    """What the teacher stage is given, read from the config before any stage runs."""

    build: Callable[[], nn.Module]  # a fresh teacher network (loaded from teacher.ckpt_path when set)
    budget: Dict[str, int]  # the training budget: {"max_epochs": n} or {"max_steps": n}
    given: Optional[str] = None  # teacher.ckpt_path: tested as it is
    pretrained: Optional[str] = None  # trained weights to test as they are ("" when they have no path)
    entry: Optional[Path] = None  # the teacher store's entry; None: train without the store
    record: Dict[str, Any] = field(default_factory=dict)  # kept in the entry's meta.json
    lock_timeout_s: float = 24 * 3600.0
    role: str = "teacher"  # or "baseline": the stage's name and the store's folder
    seed: Optional[int] = None  # teacher_fit.seed: the teacher's own init and data order (one teacher for many seeds)


def obtain_trained(plan: TeacherPlan, task: Any, datamodule: L.LightningDataModule, stages: Stages,
                   make_module: Callable[..., L.LightningModule]) -> Tuple[nn.Module, StageResult]:
    """A network trained on labels alone, the teacher or the labels-only baseline (``plan.role``), and its
    stage result (``source``: checkpoint, pretrained, store, trained or ``rebuilt (<why>)`` when a stored
    one failed its digest check or did not load). A stored one is read back from the teacher store, and
    processes that need the same one take turns on its entry's lock, so it is trained once."""
    role = plan.role
    t0 = time.perf_counter()
    if plan.seed is not None and not plan.given:
        # One teacher for runs of several seeds (a fair method table): its init and data order use this seed.
        L.seed_everything(int(plan.seed), workers=True)
    net = plan.build()
    task.check_network(net, datamodule, "student" if role == "baseline" else role)
    if plan.given or plan.pretrained is not None:
        result = stages.test(role, task.labels_only_module(make_module, net), datamodule, net,
                             time.perf_counter() - t0, "checkpoint" if plan.given else "pretrained")
        result.ckpt_path = plan.given or plan.pretrained or None
        return net, result
    done = stages.finished(role, net)  # resume=true: this run's own finished stage comes first
    if done is not None:
        done.source = done.source or "resumed"
        return net, done
    if plan.entry is None:
        result = stages.fit(role, task.labels_only_module(make_module, net), datamodule, net, **plan.budget)
        result.source = "trained"
        return net, result

    entry = plan.entry
    stored_ckpt = entry / teacher_store.checkpoint_name(entry)

    def from_store() -> Tuple[Optional[nn.Module], str]:
        ok, why = teacher_store.check_entry(entry)
        if not ok:
            return None, why
        try:
            return load_teacher(stored_ckpt, plan.build()), ""
        except Exception as err:  # matches its digest yet does not load: e.g. written by another version
            log.warning("stored %s %s does not load (%s)", role, stored_ckpt, root_cause(err))
            return None, "store entry unreadable"

    stored, why = from_store()
    if stored is None:
        # Under trainer=ddp every rank runs this process, the others started by rank 0's first fit: they
        # follow rank 0 into the (collective) fit instead of waiting for the lock it holds, and rank 0 writes.
        primary = primary_process()
        lock = teacher_store.entry_lock(entry, timeout_s=plan.lock_timeout_s) if primary else contextlib.nullcontext()
        with lock:
            stored, why_now = from_store()  # another process may have trained it while this one waited
            if stored is None:
                why = why or why_now
                if why:
                    log.warning("stored %s %s is not usable (%s): training it again", role, stored_ckpt, why)
                result = stages.fit(role, task.labels_only_module(make_module, net), datamodule, net,
                                    **plan.budget)
                result.source = f"rebuilt ({why})" if why else "trained"
                if primary:
                    teacher_store.write_entry(
                        entry, {"state_dict": {f"student.{k}": v for k, v in net.state_dict().items()}},
                        {"acc": result.acc, "ppl": result.ppl, "val_curve": result.val_curve, **plan.record})
                result.ckpt_path = str(stored_ckpt)
                return net, result
    result = stages.test(role, task.labels_only_module(make_module, stored), datamodule, stored,
                         time.perf_counter() - t0, "store")
    result.val_curve = teacher_store.read_meta(entry).get("val_curve", [])
    result.ckpt_path = str(stored_ckpt)
    return stored, result
