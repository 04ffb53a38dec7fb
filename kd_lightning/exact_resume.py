"""Exact resume: a fit stopped mid-epoch and continued from its checkpoint (``Trainer.fit(ckpt_path=...)``)
ends with the same weights and metrics as the fit never stopped.

Two pieces, both needed:

* :class:`ResumableSampler`, the training loader's shuffle (``DataLoader(ds, sampler=ResumableSampler(ds))``
  in place of ``shuffle=True``). A fresh run draws each epoch's seed from torch's global generator exactly
  as ``shuffle=True`` does, so its order, and every result, stays what it was; the sampler remembers the seed
  so that a checkpoint can name it.
* :class:`ExactResume`, a callback. Each checkpoint gets the global random states (torch's CPU generator,
  the CUDA ones when CUDA is in use, numpy's and Python's ``random``) and, for each training loader drawing
  from a :class:`ResumableSampler`, the seed of the epoch under way and the number of batches the fit
  took from it. On resume it puts them back when training starts (``on_train_start``, after Lightning has
  built the loaders), and the sampler puts the random states back once more as its pass begins, right
  before the first batch is drawn: whatever the resumed fit drew in between (building the loaders, a
  sanity check) is undone, the rest of the epoch comes in the same order, and every later random draw
  (dropout, augmentation, sampling) is the one of the unbroken run. A checkpoint written at an epoch's
  end resumes with the next epoch's order drawn as the unbroken run drew it.

Loaders without a :class:`ResumableSampler` resume as Lightning resumes them (a new order for the rest of
the epoch); the random states come back for them too. The order is exact for loaders that load in the
main process (``num_workers=0``); with worker processes the workers start drawing indices before
training starts, so such a loader resumes with a new order and a warning says so.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler

__all__ = ["ResumableSampler", "ResumeAt", "ExactResume", "train_sampler", "sampler_like", "rng_state",
           "set_rng_state"]

log = logging.getLogger(__name__)


class ResumeAt(NamedTuple):
    """Where a :class:`ResumableSampler`'s next pass starts: the pass of ``seed`` less its first ``skip``
    indices, or with ``seed`` None a new pass. ``rng`` (global random states) is put back first; with
    ``base_draw`` one number is drawn before a new pass's seed, as the unbroken run's ``iter(loader)`` drew
    its workers' base seed just before it."""

    seed: Optional[int]
    skip: int = 0
    rng: Optional[Dict[str, Any]] = None
    base_draw: bool = False


class ResumableSampler(RandomSampler):
    """Every index once per pass, shuffled; the pass's seed is drawn from torch's global generator as
    :class:`~torch.utils.data.RandomSampler` draws it, so it gives the same order as ``shuffle=True``.

    ``seed`` is the seed of the latest pass, ``passes`` how many began; ``resume_at`` (a :class:`ResumeAt`,
    set by :class:`ExactResume`) says where the next pass starts.
    """

    def __init__(self, data_source: Any):
        super().__init__(data_source)
        self.seed: Optional[int] = None
        self.passes = 0
        self.resume_at: Optional[ResumeAt] = None

    def __iter__(self) -> Iterator[int]:
        n = len(self.data_source)
        plan, self.resume_at = self.resume_at, None
        if plan is not None and plan.rng is not None:
            # The states of the moment the checkpoint was written: whatever the resumed fit drew since
            # (building its loaders, a validation run again) is not part of the unbroken run.
            set_rng_state(plan.rng)
            if plan.seed is None and plan.base_draw:
                torch.empty((), dtype=torch.int64).random_()
        if plan is not None and plan.seed is not None:
            seed, skip = plan.seed, plan.skip
        else:
            # RandomSampler's own draw, at the same moment (the first index asked for): fresh runs keep their order.
            seed, skip = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        self.seed, self.passes = seed, self.passes + 1
        generator = torch.Generator()
        generator.manual_seed(seed)
        yield from torch.randperm(n, generator=generator).tolist()[skip:]


def train_sampler(dataset: Any, shuffle: bool) -> Optional[Sampler]:
    """The ``sampler=`` of a training loader: a :class:`ResumableSampler` when it shuffles, else None."""
    return ResumableSampler(dataset) if shuffle else None


def sampler_like(base: DataLoader, dataset: Any) -> Optional[Sampler]:
    """The ``sampler=`` for a loader over ``dataset`` (a wrapper's view of ``base.dataset``, same length)
    that shuffles when ``base`` does: a :class:`ResumableSampler`, which draws as ``shuffle=True`` would."""
    return ResumableSampler(dataset) if isinstance(base.sampler, RandomSampler) else None


# ------------------------------------------------------------------------------ the random states
def rng_state() -> Dict[str, Any]:
    """torch (CPU, and CUDA once initialised), numpy and Python ``random`` states, as tensors and plain values
    (Lightning's weights-only checkpoint loading accepts them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ the callback
def _loaders(loaders: Any) -> List[Any]:
    if isinstance(loaders, dict):
        return [x for v in loaders.values() for x in _loaders(v)]
    if isinstance(loaders, (list, tuple)):
        return [x for v in loaders for x in _loaders(v)]
    return [loaders] if loaders is not None else []


def resumable_samplers(loaders: Any) -> List[Tuple[DataLoader, Optional[ResumableSampler]]]:
    """Each training loader with its :class:`ResumableSampler` (None when it has none)."""
    found = []
    for loader in _loaders(loaders):
        sampler = getattr(loader, "sampler", None)
        usable = isinstance(sampler, ResumableSampler) and getattr(loader, "batch_size", None) is not None
        found.append((loader, sampler if usable else None))
    return found


class ExactResume(L.Callback):
    """Puts the random states and the place in the epoch into checkpoints, and back on resume (see the module)."""

    def __init__(self) -> None:
        self.samplers: List[Tuple[DataLoader, Optional[ResumableSampler]]] = []
        self.taken = 0  # batches of the epoch under way that the fit took
        self.epoch_batches: float = 0  # how many it takes in an epoch
        self.pending: Optional[Dict[str, Any]] = None  # a checkpoint's state, applied when training starts

    def watch(self, trainer: L.Trainer) -> None:
        self.samplers = resumable_samplers(trainer.train_dataloader)
        self.epoch_batches = trainer.num_training_batches

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.watch(trainer)  # the loaders are new when Lightning reloads them every n epochs
        self.taken = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.taken = batch_idx + 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.taken = 0  # the next batch is the first of a new pass

    def state_dict(self) -> Dict[str, Any]:
        mid_epoch = 0 < self.taken < self.epoch_batches
        positions = []
        for loader, sampler in self.samplers:
            if mid_epoch and sampler is not None and sampler.seed is not None:
                positions.append({"seed": sampler.seed, "skip": self.taken * int(loader.batch_size)})
            else:
                positions.append(None)  # a new pass comes next, drawn as the unbroken run draws it
        return {"rng": rng_state(), "samplers": positions, "taken": self.taken}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.watch(trainer)
        state, self.pending = self.pending, None
        if state is None:
            return
        self.taken = int(state.get("taken", 0))
        set_rng_state(state["rng"])  # for what no sampler below restores: loaders the library does not know
        positions = state.get("samplers") or []
        if len(positions) != len(self.samplers):
            log.warning("exact resume: the checkpoint names %d training loaders, this fit has %d; their order "
                        "starts anew", len(positions), len(self.samplers))
            return
        first = True
        for (loader, sampler), position in zip(self.samplers, positions):
            if sampler is None:
                if 0 < self.taken < self.epoch_batches:  # mid-epoch (Lightning says so too, in its own words)
                    log.warning("exact resume: the training loader (%s) draws from no ResumableSampler; the rest of "
                                "this epoch comes in a new order", type(getattr(loader, "sampler", loader)).__name__)
                continue
            if sampler.passes:  # worker processes asked for indices already
                log.warning("exact resume: the training loader (num_workers=%s) began its pass before the "
                            "checkpoint's place could be given; the rest of this epoch comes in a new order",
                            loader.num_workers)
                continue
            # iter(loader) draws the workers' base seed from the global generator unless persistent workers
            # are reused; a new pass in the unbroken run came right after that draw.
            base_draw = loader.generator is None and not (loader.persistent_workers and loader.num_workers > 0)
            seed, skip = (int(position["seed"]), int(position["skip"])) if position else (None, 0)
            sampler.resume_at = ResumeAt(seed, skip, state["rng"] if first else None, base_draw)
            first = False
