"""The teacher stage, the same for every model family: a given checkpoint or pretrained weights are tested
as they are; otherwise the teacher comes from the teacher store (digest-checked) or is trained under the
store entry's lock, so that concurrent runs needing the same teacher train it once."""
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
    seed: Optional[int] = None  # teacher_fit.seed: the teacher's own init and data order (one teacher for many seeds)


def obtain_teacher(plan: TeacherPlan, task: Any, datamodule: L.LightningDataModule, stages: Stages,
                   make_module: Callable[..., L.LightningModule]) -> Tuple[nn.Module, StageResult]:
    """The teacher network and its stage result (``source``: checkpoint, pretrained, store, trained or
    ``rebuilt (<why>)`` when a stored teacher failed its digest check or did not load)."""
    t0 = time.perf_counter()
    if plan.seed is not None and not plan.given:
        # One teacher for runs of several seeds (a fair method table): its init and data order use this seed.
        L.seed_everything(int(plan.seed), workers=True)
    net = plan.build()
    task.check_network(net, datamodule, "teacher")
    if plan.given or plan.pretrained is not None:
        result = stages.test("teacher", task.labels_only_module(make_module, net), datamodule, net,
                             time.perf_counter() - t0, "checkpoint" if plan.given else "pretrained")
        result.ckpt_path = plan.given or plan.pretrained or None
        return net, result
    if plan.entry is None:
        result = stages.fit("teacher", task.labels_only_module(make_module, net), datamodule, net, **plan.budget)
        result.source = "trained"
        return net, result

    entry = plan.entry
    stored_ckpt = entry / "teacher.ckpt"

    def from_store() -> Tuple[Optional[nn.Module], str]:
        ok, why = teacher_store.check_entry(entry)
        if not ok:
            return None, why
        try:
            return load_teacher(stored_ckpt, plan.build()), ""
        except Exception as err:  # matches its digest yet does not load: e.g. written by another version
            log.warning("stored teacher %s does not load (%s)", stored_ckpt, root_cause(err))
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
                    log.warning("stored teacher %s is not usable (%s): training it again", stored_ckpt, why)
                result = stages.fit("teacher", task.labels_only_module(make_module, net), datamodule, net,
                                    **plan.budget)
                result.source = f"rebuilt ({why})" if why else "trained"
                if primary:
                    teacher_store.write_entry(
                        entry, {"state_dict": {f"student.{k}": v for k, v in net.state_dict().items()}},
                        {"acc": result.acc, "ppl": result.ppl, "val_curve": result.val_curve, **plan.record})
                result.ckpt_path = str(stored_ckpt)
                return net, result
    result = stages.test("teacher", task.labels_only_module(make_module, stored), datamodule, stored,
                         time.perf_counter() - t0, "store")
    result.val_curve = teacher_store.read_meta(entry).get("val_curve", [])
    result.ckpt_path = str(stored_ckpt)
    return stored, result
