#!/usr/bin/env python
"""What does kd-lightning cost on top of the networks? Side by side, same data, same models.

For two teacher/student pairs it times one training step of

  (a) student      the student alone (ClassifierModule, labels only) through Lightning
  (b) online       online KD: DistillationModule with the frozen teacher, through Lightning
  (c) cached       offline KD: DistillationModule(teacher=None) on stored teacher logits (kd_lightning.cache)
  (d) plain        the same online KD as a hand-written PyTorch loop (same loader, loss, optimizer)
  (s) plain_student  the student alone (CE) as a hand-written loop
  (c) plain_cached   offline KD as a hand-written loop on the same stored teacher logits
                   (s) and (c) give the two target ratios with no framework at all, i.e. what this
                   machine charges for KD itself: plain / (plain_student + teacher_fwd) and
                   plain_cached / plain_student
  (t) teacher_fwd  the teacher's forward pass alone (no_grad, same batches)

and (e) the peak memory of each: on the GPU ``torch.cuda.max_memory_allocated`` above what was allocated
before (after ``empty_cache``, so each includes the cuBLAS/cuDNN workspaces it needs, ~64 MiB on Hopper
for anything that runs a backward pass); on the CPU the growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs, after
``malloc_trim``) during a short run. Pairs: the MNIST-1D default job (conf/train.yaml's data, teacher and
student, batch size, optimizer and distill config; with the transfer set when the data config has one, as
kd-train's student stage does) and a CIFAR-sized pair on random [B, 3, 32, 32] data (resnet32x4 ->
resnet8x4 from kd_lightning.models.cifar, or two small conv nets if that is missing).

The five configurations run in five threads that take turns every few steps (``--chunk``), so all of them
meet the same machine load; a step is timed from one ``on_train_batch_start`` to the next (the whole loop:
data, hooks, logging, optimizer), the teacher forward on its own. A configuration's figure is its median
step; ratios are taken per round and their median is reported. On the CPU the clock is the thread's CPU
time and torch uses one thread by default (``--threads``; kd-train's MNIST-1D default is one thread too),
which keeps the numbers steady on a shared machine; on a GPU it is wall time, synchronized at each turn.
Also printed: the forward + backward cost of the KD loss minus that of CE on the logits, i.e. the part of
(online - student - teacher_fwd) that is arithmetic, not framework.

Targets on the MNIST-1D job: online <= 1.05 x (student + teacher_fwd), cached <= 1.05 x student,
online <= 1.2 x plain. The last line printed is one JSON object with the figures.

    python scripts/bench_overhead.py            # ~2.5 minutes on 2 CPU cores
    python scripts/bench_overhead.py --quick    # ~1 minute
    python scripts/bench_overhead.py --device cuda --pairs mnist1d,cifar
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from kd_lightning import ClassifierModule, DistillationModule
from kd_lightning.batch import unpack
from kd_lightning.cache import TeacherOutputsDataModule
from kd_lightning.data.arrays import ArrayDataModule
from kd_lightning.data.transfer import TransferDataModule, has_transfer_set
from kd_lightning.losses import KD
from kd_lightning.losses.base import DistillInputs

CONFIGS = ("student", "online", "cached", "plain", "plain_student", "plain_cached", "teacher_fwd")


# ------------------------------------------------------------------------------------------ setup
def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass
class Pair:
    name: str
    teacher: nn.Module
    make_student: Callable[[], nn.Module]
    datamodule: L.LightningDataModule
    loss: Callable[[], Any]
    optimizer: Callable[..., torch.optim.Optimizer]
    steps: int
    warmup: int
    reps: int
    chunk: int
    trainer_kwargs: Dict[str, Any] = field(default_factory=dict)
    callbacks: Callable[[], List[L.Callback]] = list
    description: str = ""


def isolate_rich_consoles() -> None:
    """Rich progress bars draw on one global console, which concurrent fits (one per thread, see
    :func:`interleaved`) would share; give every thread its own console writing to memory instead."""
    try:
        from lightning.pytorch.callbacks.progress import rich_progress
        from rich.console import Console
    except ImportError:
        return
    local = threading.local()

    def get_console() -> "Console":
        if getattr(local, "console", None) is None:
            local.console = Console(file=io.StringIO())
        return local.console

    rich_progress.get_console = get_console
    rich_progress.reconfigure = lambda *a, **k: None


def app_config():
    from hydra import compose, initialize_config_dir

    from kd_lightning.app.confdir import CONFIG_DIR

    # The benchmark's job is plain KD (T=4, CE 0.1 + KD 0.9) with the 4,000-sample transfer set: the default
    # job before it moved to patient and consistent distillation (experiment=mnist1d_patient).
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["experiment=mnist1d_kd"])


def mnist1d_pair(args, cache_dir: str) -> Pair:
    """The kd-train default job, built from conf/train.yaml."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from kd_lightning.app.build import build_loss

    cfg = app_config()
    data_cfg = OmegaConf.to_container(cfg.data, resolve=False)
    data_cfg.update(cache_dir=os.path.join(cache_dir, "data"), seed=int(cfg.seed))
    data_cfg.pop("num_train", None)
    dm = instantiate(data_cfg)
    dm.setup("fit")
    extra = ""
    if has_transfer_set(dm):  # what kd-train's student stage trains on
        extra = f" + {len(dm.transfer_dataset())} transfer samples"
        dm = TransferDataModule(dm)
    torch.manual_seed(0)
    teacher = instantiate(cfg.teacher.net)
    trainer_keys = ("precision", "log_every_n_steps", "enable_progress_bar", "deterministic", "benchmark")
    trainer_kwargs = {k: cfg.trainer[k] for k in trainer_keys if k in cfg.trainer}

    def callbacks() -> List[L.Callback]:  # the app's callbacks (its progress bar), less checkpointing
        out = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]
        out = [c for c in out if not isinstance(c, L.pytorch.callbacks.ModelCheckpoint)]
        if not trainer_kwargs.get("enable_progress_bar", True):
            out = [c for c in out if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
        return out
    return Pair(
        name="mnist1d", teacher=teacher, make_student=lambda: instantiate(cfg.student.net), datamodule=dm,
        loss=lambda: build_loss(cfg.distill), optimizer=instantiate(cfg.optim.optimizer),
        steps=args.steps, warmup=args.warmup, reps=args.reps, chunk=args.chunk, trainer_kwargs=trainer_kwargs, callbacks=callbacks,
        description=(f"MNIST-1D default job: {cfg.teacher.net.channels}-channel CNN1D -> "
                     f"{cfg.student.net.channels}-channel CNN1D, batch {cfg.data.batch_size}{extra}, "
                     f"{cfg.distill.name} T={cfg.distill.temperature}"))


class RandomImages(ArrayDataModule):
    """Random CIFAR-sized images and labels (timing only)."""

    def __init__(self, n: int, num_classes: int = 100, **kwargs):
        super().__init__(val_fraction=0.0, **kwargs)
        self.n, self.classes = n, num_classes

    def load_arrays(self):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((self.n, 3, 32, 32), dtype=np.float32)
        y = rng.integers(0, self.classes, self.n)
        k = min(self.n, self.classes)
        y[:k] = np.arange(k)
        return x, y, x[: self.batch_size], y[: self.batch_size]


class SmallConv(nn.Module):
    def __init__(self, width: int, num_classes: int = 100):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


def cifar_pair(args) -> Pair:
    try:
        from kd_lightning.models.cifar.resnet import resnet8x4, resnet32x4

        make_t, make_s, what = resnet32x4, resnet8x4, "resnet32x4 -> resnet8x4"
    except ImportError:
        make_t, make_s = (lambda: SmallConv(64)), (lambda: SmallConv(16))
        what = "conv64 -> conv16"
    bs = args.cifar_batch
    n = bs * (args.cifar_steps + args.cifar_warmup + 2)
    dm = RandomImages(n=n, batch_size=bs)
    dm.setup("fit")
    torch.manual_seed(0)
    return Pair(
        name="cifar", teacher=make_t(), make_student=make_s, datamodule=dm,
        loss=lambda: KD(temperature=4.0, ce_weight=0.1, kd_weight=0.9),
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),
        steps=args.cifar_steps, warmup=args.cifar_warmup, reps=args.cifar_reps, chunk=1,
        trainer_kwargs={"precision": "32-true", "log_every_n_steps": 20, "enable_progress_bar": True},
        description=f"CIFAR-sized random data: {what}, batch {bs}, KD T=4")


# --------------------------------------------------------------------------------- interleaving
class Clock:
    """Per-thread CPU time (``cpu``) or wall time (``wall``; the GPU is synchronized at each switch)."""

    def __init__(self, device: torch.device, kind: str):
        self.device = device
        self.cpu = kind == "cpu"

    def now(self) -> float:
        return time.thread_time() if self.cpu else time.perf_counter()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class Baton:
    """Lets one configuration run at a time, handing over every ``chunk`` steps (round robin)."""

    def __init__(self, names: List[str]):
        self.names, self.turn, self.done = list(names), 0, set()
        self.cv = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.names[self.turn] == name)

    def _advance(self) -> None:
        for _ in range(len(self.names)):
            self.turn = (self.turn + 1) % len(self.names)
            if self.names[self.turn] not in self.done:
                break
        self.cv.notify_all()

    def pass_on(self, name: str) -> None:
        with self.cv:
            if self.names[self.turn] == name:
                self._advance()

    def finish(self, name: str) -> None:
        with self.cv:
            self.done.add(name)
            if self.names[self.turn] == name and len(self.done) < len(self.names):
                self._advance()


class Ticker:
    """Called at the start of every step: records step times and takes turns with the other runs."""

    def __init__(self, name: str, baton: Optional[Baton], clock: Clock, chunk: int):
        self.name, self.baton, self.clock, self.chunk = name, baton, clock, chunk
        self.times: List[float] = []
        self.prev: Optional[float] = None
        self.count = 0

    def _turn(self) -> None:
        """Every ``chunk`` steps (and before the first), hand over to the next configuration."""
        self.count += 1
        if self.baton is not None and (self.count == 1 or (self.count - 1) % self.chunk == 0):
            self.clock.sync()
            if self.count > 1:
                self.baton.pass_on(self.name)
            self.baton.wait(self.name)

    def tick(self) -> None:
        """Cycle timing: called at the start of every step; a step lasts until the next call."""
        now = self.clock.now()
        if self.prev is not None:
            self.times.append(now - self.prev)
        self._turn()
        self.prev = self.clock.now()

    def measure(self, fn: Callable[[], Any]) -> None:
        """Direct timing of ``fn`` alone (the work around it, e.g. loading data, is not counted)."""
        self._turn()
        t0 = self.clock.now()
        fn()
        self.clock.sync()
        self.times.append(self.clock.now() - t0)


class TickerCallback(L.Callback):
    def __init__(self, ticker: Optional[Ticker]):
        self.ticker = ticker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.ticker is not None:
            self.ticker.tick()


def _tick(ticker: Optional[Ticker]) -> None:
    if ticker is not None:
        ticker.tick()


# ------------------------------------------------------------------------------------------ runs
def lightning_run(pair: Pair, config: str, steps: int, ticker: Optional[Ticker], device: torch.device,
                  cached_dm, log_dir: str) -> None:
    torch.manual_seed(1)
    student = pair.make_student()
    kw = {"optimizer": pair.optimizer}
    if config == "student":
        module, dm = ClassifierModule(student, **kw), pair.datamodule
    elif config == "online":
        teacher = copy.deepcopy(pair.teacher)
        module, dm = DistillationModule(student, teacher, loss=pair.loss(), **kw), pair.datamodule
    else:
        module, dm = DistillationModule(student, None, loss=pair.loss(), **kw), cached_dm
    from lightning.pytorch.loggers import CSVLogger

    trainer = L.Trainer(
        accelerator=device.type, devices=1, max_steps=steps + 1, max_epochs=-1, limit_val_batches=0,
        num_sanity_val_steps=0, enable_checkpointing=False, enable_model_summary=False,
        logger=CSVLogger(log_dir, name=config), callbacks=[TickerCallback(ticker)] + pair.callbacks(),
        **pair.trainer_kwargs)
    trainer.fit(module, datamodule=dm)


def batches_on(pair: Pair, device: torch.device, datamodule: Optional[L.LightningDataModule] = None):
    """(x, y, labeled, teacher_logits) on ``device``, endlessly; teacher_logits from a cached data module."""
    dm = datamodule or pair.datamodule
    while True:
        for batch in dm.train_dataloader():
            b = unpack(batch)
            moved = [None if t is None else t.to(device, non_blocking=True) for t in (b.labeled, b.teacher_logits)]
            yield (b.x.to(device, non_blocking=True), b.y.to(device, non_blocking=True), *moved)


def plain_run(pair: Pair, steps: int, ticker: Optional[Ticker], device: torch.device, mode: str = "online",
              cached_dm: Optional[L.LightningDataModule] = None) -> None:
    """KD written by hand: what Lightning's loop does for us, without it. ``mode``: "online" (the frozen
    teacher runs in the step), "cached" (teacher logits from ``cached_dm``'s batches) or "student" (CE only,
    the same loop less the teacher)."""
    from kd_lightning.losses import CE

    torch.manual_seed(1)
    student = pair.make_student().to(device).train()
    teacher = copy.deepcopy(pair.teacher).to(device).eval() if mode == "online" else None
    for p in teacher.parameters() if teacher is not None else ():
        p.requires_grad_(False)
    loss = (CE() if mode == "student" else pair.loss()).to(device)
    opt = pair.optimizer(list(student.parameters()) + list(loss.parameters()))
    data = batches_on(pair, device, cached_dm if mode == "cached" else None)
    for _ in range(steps + 1):
        _tick(ticker)
        x, y, labeled, t_logits = next(data)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x)
        s_logits = student(x)
        terms = loss(DistillInputs(student_logits=s_logits, teacher_logits=t_logits, target=y, labeled=labeled))
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()


def teacher_fwd_run(pair: Pair, steps: int, ticker: Optional[Ticker], device: torch.device) -> None:
    """The teacher's forward pass alone, on the same stream of batches (their loading is not timed)."""
    teacher = copy.deepcopy(pair.teacher).to(device).eval()
    data = batches_on(pair, device)
    with torch.no_grad():
        for _ in range(steps + 1):
            x = next(data)[0]
            if ticker is None:
                teacher(x)
            else:
                ticker.measure(lambda: teacher(x))


def loss_delta_ms(pair: Pair, device: torch.device, clock: Clock, n: int = 300) -> float:
    """Forward + backward of the KD loss minus those of plain CE, on one batch's logits: the part of
    (online - student - teacher_fwd) that is arithmetic of the loss, not framework."""
    from kd_lightning.losses import CE

    data = batches_on(pair, device)
    x, y, labeled, _ = next(data)
    with torch.no_grad():
        s0, t = pair.make_student().to(device)(x), copy.deepcopy(pair.teacher).to(device).eval()(x)
    best = {}
    for name, obj in (("kd", pair.loss().to(device)), ("ce", CE().to(device))):
        times = []
        for _ in range(5):
            t0 = clock.now()
            for _ in range(n // 5):
                s = s0.clone().requires_grad_()
                obj(DistillInputs(student_logits=s, teacher_logits=t, target=y, labeled=labeled))["loss"].backward()
            clock.sync()
            times.append((clock.now() - t0) / (n // 5))
        best[name] = min(times)
    return 1000.0 * (best["kd"] - best["ce"])


# ---------------------------------------------------------------------------------------- memory
# One peak-memory window per configuration, measured as kd-train's StepCost measures a stage.
from kd_lightning.step_cost import peak_since, start_peak_window  # noqa: E402


def run_config(pair, config, steps, ticker, device, cached_dm, log_dir) -> None:
    if config.startswith("plain"):
        mode = {"plain": "online", "plain_student": "student", "plain_cached": "cached"}[config]
        plain_run(pair, steps, ticker, device, mode, cached_dm)
    elif config == "teacher_fwd":
        teacher_fwd_run(pair, steps, ticker, device)
    else:
        lightning_run(pair, config, steps, ticker, device, cached_dm, log_dir)


def interleaved(pair: Pair, clock: Clock, device: torch.device, cached_dm, log_dir: str, chunk: int) -> Dict[str, List[float]]:
    """Run every configuration in its own thread, one at a time, switching every ``chunk`` steps, so all
    of them meet the same machine load; returns the step times after warm-up."""
    baton = Baton(list(CONFIGS))
    tickers = {c: Ticker(c, baton, clock, chunk) for c in CONFIGS}
    errors: Dict[str, BaseException] = {}

    def work(config: str) -> None:
        try:
            run_config(pair, config, pair.warmup + pair.steps, tickers[config], device, cached_dm, log_dir)
        except BaseException as err:  # reported by the main thread
            errors[config] = err
        finally:
            baton.finish(config)

    threads = [threading.Thread(target=work, args=(c,), name=f"bench-{c}") for c in CONFIGS]
    with contextlib.redirect_stdout(io.StringIO()):  # progress bars still render, silently
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        config, err = next(iter(errors.items()))
        raise RuntimeError(f"the {config!r} run failed: {type(err).__name__}: {err}") from err
    return {c: t.times[pair.warmup:pair.warmup + pair.steps] for c, t in tickers.items()}


def bench_pair(pair: Pair, args, clock: Clock, device: torch.device, work: str) -> Dict[str, Any]:
    cached_dm = TeacherOutputsDataModule(pair.datamodule, pair.teacher, os.path.join(work, f"cache_{pair.name}"),
                                        data_config={"bench": pair.name}, device=device)
    cached_dm.prepare_outputs()
    log_dir = os.path.join(work, "logs")
    # Peak memory first, one short run per configuration, before the timing leaves anything behind.
    memory: Dict[str, Optional[float]] = {}
    if not args.no_memory:
        with contextlib.redirect_stdout(io.StringIO()):  # one-time initializations are nobody's peak
            for config in ("online", "cached"):
                run_config(pair, config, 2, None, device, cached_dm, log_dir)
        for config in CONFIGS:
            base = start_peak_window(device)
            with contextlib.redirect_stdout(io.StringIO()):
                run_config(pair, config, max(2, min(pair.steps, 5)), None, device, cached_dm, log_dir)
            memory[config] = peak_since(device, base)
    runs: Dict[str, List[List[float]]] = {c: [] for c in CONFIGS}
    for rep in range(pair.reps):
        for config, times in interleaved(pair, clock, device, cached_dm, log_dir, pair.chunk).items():
            runs[config].append(times)
    # Per repetition, the median step of each configuration; ratios are taken within a repetition (runs
    # close in time share the machine's load) and their median over repetitions is reported.
    med = {c: [statistics.median(r) for r in rs] for c, rs in runs.items()}

    def ratio(f: Callable[[Dict[str, float]], float]) -> float:
        return round(statistics.median(f({c: med[c][i] for c in CONFIGS}) for i in range(pair.reps)), 4)

    pooled = {c: [t for r in rs for t in r] for c, rs in runs.items()}
    delta = loss_delta_ms(pair, device, clock)
    ms = {c: 1000.0 * statistics.median(v) for c, v in med.items()}
    return {
        "kd_minus_ce_loss_ms": round(delta, 3),
        "online_over_student_plus_teacher_fwd_plus_loss": round(
            ms["online"] / (ms["student"] + ms["teacher_fwd"] + delta), 4),
        "description": pair.description,
        "ms_per_step": {c: round(1000.0 * statistics.median(v), 3) for c, v in med.items()},
        "ms_iqr": {c: round(1000.0 * float(np.percentile(v, 75) - np.percentile(v, 25)), 3) for c, v in pooled.items()},
        "samples": {c: len(v) for c, v in pooled.items()},
        "online_over_student_plus_teacher_fwd": ratio(lambda m: m["online"] / (m["student"] + m["teacher_fwd"])),
        "cached_over_student": ratio(lambda m: m["cached"] / m["student"]),
        "lightning_over_plain_loop": ratio(lambda m: m["online"] / m["plain"]),
        # The same ratio as the first target, with no framework at all: what the machine charges for
        # running the teacher inside the student's step (caches, allocator) plus the KD loss arithmetic.
        "plain_over_plain_student_plus_teacher_fwd": ratio(
            lambda m: m["plain"] / (m["plain_student"] + m["teacher_fwd"])),
        "plain_cached_over_plain_student": ratio(lambda m: m["plain_cached"] / m["plain_student"]),
        "peak_memory_mb": {c: (round(v, 2) if v is not None else None) for c, v in memory.items()},
    }


def print_table(name: str, res: Dict[str, Any], clock_name: str) -> None:
    print(f"\n== {name}: {res['description']}")
    print(f"{'config':<12} {'ms/step':>10} {'IQR ms':>9} {'steps':>6} {'peak MiB':>9}")
    for c in CONFIGS:
        mem = res["peak_memory_mb"].get(c)
        print(f"{c:<12} {res['ms_per_step'][c]:>10.3f} {res['ms_iqr'][c]:>9.3f} {res['samples'][c]:>6} "
              f"{('-' if mem is None else f'{mem:.1f}'):>9}")
    print(f"online / (student + teacher_fwd) = {res['online_over_student_plus_teacher_fwd']:.3f}   "
          f"cached / student = {res['cached_over_student']:.3f}   "
          f"online / plain loop = {res['lightning_over_plain_loop']:.3f}   ({clock_name} time)")
    print(f"KD loss minus CE loss (forward + backward on the logits): {res['kd_minus_ce_loss_ms']:.3f} ms; "
          f"online / (student + teacher_fwd + that) = {res['online_over_student_plus_teacher_fwd_plus_loss']:.3f}")
    print(f"without Lightning: plain / (plain_student + teacher_fwd) = "
          f"{res['plain_over_plain_student_plus_teacher_fwd']:.3f}   "
          f"plain_cached / plain_student = {res['plain_cached_over_plain_student']:.3f}   "
          f"student / plain_student = {res['ms_per_step']['student'] / res['ms_per_step']['plain_student']:.3f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repetitions (about 1 minute)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 on the CPU for steady numbers; 0 keeps torch's default)")
    p.add_argument("--clock", default="auto", choices=["auto", "cpu", "wall"],
                   help="auto: the thread's CPU time on a single-threaded CPU run, wall time otherwise")
    p.add_argument("--pairs", default="mnist1d,cifar")
    p.add_argument("--reps", type=int, default=None, help="interleaved rounds (MNIST-1D)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration and round (MNIST-1D)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--chunk", type=int, default=5, help="steps a configuration runs before handing over")
    p.add_argument("--cifar-batch", type=int, default=None)
    p.add_argument("--cifar-steps", type=int, default=None)
    p.add_argument("--cifar-warmup", type=int, default=1)
    p.add_argument("--cifar-reps", type=int, default=1)
    p.add_argument("--no-memory", action="store_true")
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available() and args.device in ("auto", "cuda")
    args.reps = args.reps or (2 if args.quick else 3)
    args.steps = args.steps or (100 if args.quick else 300)
    args.cifar_batch = args.cifar_batch or (64 if gpu else (8 if args.quick else 16))
    args.cifar_steps = args.cifar_steps or ((10 if gpu else 3) if args.quick else (40 if gpu else 8))
    return args


def main(argv=None) -> Dict[str, Any]:
    args = parse_args(argv)
    quiet()
    isolate_rich_consoles()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is available")
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    clock_kind = args.clock if args.clock != "auto" else ("cpu" if device.type == "cpu" and threads == 1 else "wall")
    clock = Clock(device, clock_kind)
    t_start = time.perf_counter()
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as work:
        cache_dir = os.environ.get("KD_CACHE_DIR") or os.path.join(work, "cache")
        for name in [p.strip() for p in args.pairs.split(",") if p.strip()]:
            pair = mnist1d_pair(args, cache_dir) if name == "mnist1d" else cifar_pair(args) if name == "cifar" else None
            if pair is None:
                raise SystemExit(f"unknown pair {name!r}; choose from mnist1d, cifar")
            results[name] = bench_pair(pair, args, clock, device, work)
            print_table(name, results[name], clock_kind)
    head = results.get("mnist1d") or next(iter(results.values()))
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "clock": clock_kind, "quick": args.quick,
        "online_over_student_plus_teacher_fwd": head["online_over_student_plus_teacher_fwd"],
        "cached_over_student": head["cached_over_student"],
        "lightning_over_plain_loop": head["lightning_over_plain_loop"],
        "plain_over_plain_student_plus_teacher_fwd": head["plain_over_plain_student_plus_teacher_fwd"],
        "plain_cached_over_plain_student": head["plain_cached_over_plain_student"],
        "peak_memory_mb": head["peak_memory_mb"],
        "targets_met": {
            "online_over_student_plus_teacher_fwd<=1.05": head["online_over_student_plus_teacher_fwd"] <= 1.05,
            "cached_over_student<=1.05": head["cached_over_student"] <= 1.05,
            "lightning_over_plain_loop<=1.2": head["lightning_over_plain_loop"] <= 1.2,
        },
        "pairs": results,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(f"\ntotal {summary['seconds']} s")
    print(json.dumps(summary, sort_keys=False))
    return summary


if __name__ == "__main__":
    main()
