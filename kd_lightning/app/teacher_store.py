"""The teacher store: trained teachers kept across runs, ``<paths.cache_dir>/teachers/<key>/{teacher.ckpt,
meta.json, .lock}`` (``teacher_fit.use_store``), for classifiers and language models alike.

* The key covers everything that changes the trained teacher: the teacher and data configs (less the
  loader settings that only change speed), the seed, ``teacher_fit``, the optimizer, every trainer field
  that bounds or shapes training, the module settings, the callbacks that steer training (checkpoint
  selection, early stopping) and ``test_ckpt``. Fields known not to change the teacher are listed here
  by name; any other field, including one Lightning adds later, is part of the key
  (``tests/app/test_faults.py`` fails when a Trainer parameter is on neither list). A model family adds
  what else shapes its teacher (a language model: its tokenizer's digest).
* ``meta.json`` records the SHA-256 of ``teacher.ckpt``; a reused checkpoint must match it, otherwise the
  teacher is trained again and the report says why (``teacher.source: "rebuilt (store digest mismatch)"``).
* A lock file serialises the processes that need the same teacher not yet stored: the first trains it, the
  others wait and then read it from the store.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from .. import io

log = logging.getLogger(__name__)

# Trainer fields that bound or shape the teacher's training (or which weights are kept as "best").
TRAINER_KEY_FIELDS = frozenset({
    "_target_", "accelerator", "strategy", "devices", "num_nodes", "precision", "min_epochs", "max_steps",
    "min_steps", "max_time", "limit_train_batches", "limit_val_batches", "overfit_batches", "val_check_interval",
    "check_val_every_n_epoch", "num_sanity_val_steps", "enable_checkpointing", "accumulate_grad_batches",
    "gradient_clip_val", "gradient_clip_algorithm", "deterministic", "benchmark", "use_distributed_sampler",
    "barebones", "plugins", "sync_batchnorm", "reload_dataloaders_every_n_epochs",
})
# Trainer fields that do not change the trained teacher, and why.
TRAINER_NOT_KEY_FIELDS = {
    "max_epochs": "the teacher's epochs are teacher_fit.max_epochs, which is in the key",
    "fast_dev_run": "a fast_dev_run never uses the teacher store",
    "limit_test_batches": "testing only",
    "limit_predict_batches": "prediction only",
    "inference_mode": "evaluation only",
    "log_every_n_steps": "logging only",
    "logger": "logging only (kd-train sets it per stage)",
    "callbacks": "kd-train builds them from the callbacks node, which is in the key",
    "enable_progress_bar": "display only",
    "enable_model_summary": "display only",
    "enable_autolog_hparams": "logging only",
    "profiler": "measurement only",
    "detect_anomaly": "a check: it stops a run, never changes a finished one",
    "default_root_dir": "where files go (kd-train sets it per stage)",
    "model_registry": "where a model is published",
}
# Data fields that change only loading speed, or where generated data is kept (not what it is).
DATA_NOT_KEY_FIELDS = frozenset({"num_workers", "pin_memory", "persistent_workers", "eval_batch_size", "cache_dir"})
# Module fields that do not change a labels-only teacher stage.
MODULE_NOT_KEY_FIELDS = frozenset({"save_teacher", "check_finite", "finite_check_interval", "ensemble_mode",
                                   "ensemble_weights"})
TEACHER_FIT_NOT_KEY_FIELDS = frozenset({"use_store", "lock_timeout_s"})
# Callback entries that only display, log or measure.
CALLBACK_NOT_KEY_NAMES = frozenset({"progress_bar", "model_summary", "rich_model_summary", "learning_rate_monitor",
                                    "lr_monitor", "device_stats", "step_cost"})


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _without(node: Any, drop) -> Dict[str, Any]:
    return {k: v for k, v in (_plain(node) or {}).items() if k not in drop}


def teacher_key_parts(cfg: DictConfig) -> Dict[str, Any]:
    """Everything the trained teacher depends on, as plain data (hashed into the store key)."""
    fit = _plain(cfg.get("teacher_fit") or {}) or {}
    # The seed the teacher trains with is keyed once: teacher_fit.seed=42 in a run of seed 1 shares the
    # teacher of a run of seed 42 (a seed table reuses the default run's teacher).
    teacher_fit = _without(fit, TEACHER_FIT_NOT_KEY_FIELDS | {"seed"})
    return {
        "teacher": _plain(cfg.teacher),
        "data": _without(cfg.data, DATA_NOT_KEY_FIELDS),
        "seed": cfg.seed if fit.get("seed") is None else fit["seed"],
        "teacher_fit": teacher_fit,
        "optim": _plain(cfg.optim),
        "trainer": _without(cfg.trainer, TRAINER_NOT_KEY_FIELDS),
        "module": _without(cfg.get("module") or {}, MODULE_NOT_KEY_FIELDS),
        "callbacks": _without(cfg.get("callbacks") or {}, CALLBACK_NOT_KEY_NAMES),
        "test_ckpt": str(cfg.get("test_ckpt", "best")),
    }


def baseline_key_parts(cfg: DictConfig) -> Dict[str, Any]:
    """Everything the labels-only baseline depends on: the student architecture, the data, the seed and the
    training settings, and nothing of ``distill`` (a sweep over distillation settings shares one baseline)."""
    return {
        "student": _plain(cfg.student),
        "data": _without(cfg.data, DATA_NOT_KEY_FIELDS),
        "seed": cfg.seed,
        "optim": _plain(cfg.optim),
        "trainer": _without(cfg.trainer, TRAINER_NOT_KEY_FIELDS),
        "module": _without(cfg.get("module") or {}, MODULE_NOT_KEY_FIELDS),
        "callbacks": _without(cfg.get("callbacks") or {}, CALLBACK_NOT_KEY_NAMES),
        "test_ckpt": str(cfg.get("test_ckpt", "best")),
    }


# What each role's entry is keyed by, and the store's folder for it.
KEY_PARTS = {"teacher": teacher_key_parts, "baseline": baseline_key_parts}
FOLDERS = {"teacher": "teachers", "baseline": "baselines"}


def teacher_key(cfg: DictConfig, extra: Optional[Dict[str, Any]] = None, role: str = "teacher") -> str:
    """The entry's name: a digest of the role's key parts plus a model family's ``extra`` parts."""
    parts = {**KEY_PARTS[role](cfg), **(extra or {})}
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry_dir(cfg: DictConfig, extra: Optional[Dict[str, Any]] = None, role: str = "teacher") -> Path:
    """``<paths.cache_dir>/teachers/<key>`` (``baselines/<key>`` for the labels-only baseline): where the
    trained network ``cfg`` describes is kept."""
    return Path(cfg.paths.cache_dir) / FOLDERS[role] / teacher_key(cfg, extra, role)


def checkpoint_name(entry: Path) -> str:
    """The entry's checkpoint file: ``teacher.ckpt`` in ``teachers/``, ``baseline.ckpt`` in ``baselines/``."""
    return "baseline.ckpt" if entry.parent.name == FOLDERS["baseline"] else "teacher.ckpt"


# ------------------------------------------------------------------------------------ reading back
def check_entry(entry: Path) -> Tuple[bool, str]:
    """Whether ``entry`` holds a complete, unchanged teacher: ``(True, "")`` or ``(False, reason)``.

    The reason is empty when there is simply nothing stored yet.
    """
    ckpt, meta_path = entry / checkpoint_name(entry), entry / "meta.json"
    if not ckpt.exists() and not meta_path.exists():
        return False, ""
    if not meta_path.is_file():
        return False, "store has no meta.json"  # the writer died between the checkpoint and its record
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False, "store meta.json unreadable"
    expected = meta.get("sha256") if isinstance(meta, dict) else None
    if not expected:
        return False, "store has no digest"
    if not ckpt.is_file():
        return False, "store checkpoint missing"
    if io.file_sha256(ckpt) != expected:
        return False, "store digest mismatch"
    return True, ""


def read_meta(entry: Path) -> Dict[str, Any]:
    try:
        return json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def write_entry(entry: Path, state: Dict[str, Any], meta: Dict[str, Any]) -> Path:
    """The checkpoint, then meta.json with its digest (written last: it marks the entry complete)."""
    (entry / "meta.json").unlink(missing_ok=True)
    ckpt = entry / checkpoint_name(entry)
    io.torch_save(state, ckpt)
    io.write_json(entry / "meta.json", {**meta, "sha256": io.file_sha256(ckpt)})
    return ckpt


# ---------------------------------------------------------------------------------------- locking
@contextmanager
def entry_lock(entry: Path, timeout_s: float = 24 * 3600.0, poll_s: float = 1.0) -> Iterator[bool]:
    """Hold ``<entry>/.lock`` (``fcntl.flock``); yields True when held, False after ``timeout_s`` of waiting.

    The kernel drops a flock when its process dies (kill -9 included), so a crashed run never leaves a
    stale lock; the timeout only guards against a live but stuck holder (or a file system without locks),
    after which this process trains the teacher itself.
    """
    entry.mkdir(parents=True, exist_ok=True)
    path = entry / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    held, waited = False, False
    try:
        t0 = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                pass
            except OSError as err:  # no locks on this file system: go on unlocked
                log.warning("cannot lock %s (%s); training without a lock", path, err)
                break
            if not waited:
                holder = _read_holder(fd)
                log.info("waiting for %s to finish training this teacher (lock %s)", holder or "another process",
                         path)
                waited = True
            if time.monotonic() - t0 > timeout_s:
                log.warning("lock %s still held after %.0fs (%s); treating it as stale and training the teacher "
                            "here", path, timeout_s, _read_holder(fd) or "unknown holder")
                break
            time.sleep(poll_s)
        if held:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n".encode(), 0)
        yield held
    finally:
        if held:
            try:
                os.ftruncate(fd, 0)
            except OSError:  # pragma: no cover
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> Optional[str]:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or None
    except OSError:  # pragma: no cover
        return None
