"""A run owns its directory; a sweep owns its job directories.

A run holds an exclusive ``flock`` on ``<run dir>/.kd_run.lock`` from its claim until the process ends
(the kernel drops it when the process dies, kill -9 included), so of two processes started at once on
one directory one runs and the other is refused in one line. Holding it, the run removes the temporary
files that killed writers left behind there (no live writer can own them). A directory that cannot be
written, and a disk that fills up later, end the run with one line naming the path.

``<run dir>/.kd_run.json`` records the fingerprint of the config that writes there (Hydra's
``.hydra/config.yaml`` cannot serve: Hydra rewrites it before the task starts). A run refuses a
directory that already holds outputs of another config; the same config may run there again (with
``resume=true`` it continues the run). Every job of a sweep writes ``job_status.json`` with its sweep's
id, so the sweep summary lists this sweep's jobs only.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from .. import io
from .confdir import ddp_child
from .errors import ConfigError

log = logging.getLogger(__name__)

FINGERPRINT = ".kd_run.json"
LOCK = ".kd_run.lock"
JOB_STATUS = "job_status.json"
SWEEP_ID = ".kd_sweep.json"
# What Hydra and kd-train put into a run directory before the run writes any output.
_OWN = {".hydra", FINGERPRINT, LOCK, JOB_STATUS}
# Temporary files of the atomic writers (kd_lightning.io) and of the exporter.
LEFTOVER = re.compile(r"^\..+\.(?:[0-9a-f]{12}\.tmp|tmp-\d+)$")
# Errors that mean "this path cannot be written", reported as one line naming the path.
WRITE_ERRORS = {errno.ENOSPC: "the disk is full; free space there or set paths.output_dir / paths.cache_dir to "
                              "another disk",
                errno.EDQUOT: "the disk quota is used up; free space there or write to another disk",
                errno.EROFS: "the file system is read-only; choose a writable directory",
                errno.EACCES: "permission denied; choose a directory you can write to",
                errno.EPERM: "permission denied; choose a directory you can write to"}
_HELD: Dict[str, int] = {}  # run directory -> descriptor holding its lock, for the life of this process
# Config keys that do not make a run another run.
_NOT_FINGERPRINTED = ("resume",)


def _config(cfg: DictConfig) -> Dict[str, Any]:
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key in _NOT_FINGERPRINTED:
        plain.pop(key, None)
    return plain


def fingerprint(cfg: DictConfig) -> str:
    return hashlib.sha256(json.dumps(_config(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def differences(old: Dict[str, Any], new: Dict[str, Any], limit: int = 4) -> str:
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    shown = ", ".join(f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def outputs(out: Path) -> List[str]:
    """The run outputs already in ``out`` (Hydra's own files and logs are not outputs)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name not in _OWN and not p.name.endswith(".log"))


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_error(err: BaseException) -> Optional[str]:
    """One line for an error that means a path cannot be written (full disk, read-only, no permission),
    naming the path; None for any other error."""
    if not isinstance(err, OSError) or err.errno not in WRITE_ERRORS:
        return None
    where = os.fspath(err.filename) if err.filename is not None else "the run's files"
    name = os.path.basename(where)
    if LEFTOVER.match(name):  # name the file being written, not its temporary twin
        where = os.path.join(os.path.dirname(where), re.sub(r"\.(?:[0-9a-f]{12}\.tmp|tmp-\d+)$", "", name[1:]))
    return f"cannot write {where!r} ({err.strerror}): {WRITE_ERRORS[err.errno]}"


def hold(out: Path) -> None:
    """Lock ``out`` for this process (again: nothing to do), or raise :class:`ConfigError` naming the
    process that holds it, or the reason the directory cannot be written."""
    key = os.path.abspath(out)
    if key in _HELD:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ConfigError(f"run directory {str(out)!r} cannot be written ({type(err).__name__}: {err.strerror}); "
                          "choose a writable directory (hydra.run.dir=... or paths.output_dir=...)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        holder = (read_json(out / FINGERPRINT) or {}).get("pid")
        who = f" (pid {holder})" if holder else ""
        raise ConfigError(f"run directory {str(out)!r} is in use by another kd-train process{who}; wait for it to "
                          "end, or run in a new directory (drop hydra.run.dir, or set another)") from None
    _HELD[key] = fd


def remove_leftovers(out: Path) -> List[Path]:
    """Delete the temporary files killed writers left under ``out`` (call it holding ``out``'s lock)."""
    removed = [p for p in out.rglob(".*") if p.is_file() and LEFTOVER.match(p.name)]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def claim(cfg: DictConfig) -> bool:
    """Make ``paths.output_dir`` this run's, or raise :class:`ConfigError`; True when it holds this config's
    earlier outputs (what ``resume=true`` continues)."""
    out = Path(cfg.paths.output_dir)
    if not ddp_child():  # a DDP rank Lightning started joins the directory its launching process holds
        hold(out)  # first: the checks below and the fingerprint written after them are this process's alone
        removed = remove_leftovers(out)
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), out)
    found = outputs(out)
    stored = read_json(out / FINGERPRINT)
    mine = fingerprint(cfg)
    resume = bool(cfg.get("resume", False))
    if found:
        if stored is None:
            raise ConfigError(
                f"run directory {str(out)!r} already holds {', '.join(found[:5])} from a run kd-train cannot "
                f"identify (no {FINGERPRINT}); run in a new directory (drop hydra.run.dir, or set another) "
                "or empty that one")
        if stored.get("fingerprint") != mine:
            why = differences(stored.get("config") or {}, _config(cfg))
            hint = " (resume=true continues only the same config)" if resume else ""
            raise ConfigError(
                f"run directory {str(out)!r} holds the outputs of another config ({why or 'another config'})"
                f"{hint}; run in a new directory (drop hydra.run.dir, or set another), or repeat that run's "
                "exact command")
    elif resume and stored is None:
        raise ConfigError(f"resume=true but {str(out)!r} holds no earlier run to continue; point hydra.run.dir at "
                          "the run directory of the interrupted run, or drop resume=true")
    io.write_json(out / FINGERPRINT, {"fingerprint": mine, "pid": os.getpid(), "started": time.time(),
                                      "config": _config(cfg)})
    return bool(found)


# ------------------------------------------------------------------------------------------ sweeps
def new_sweep_id(sweep_dir: Path) -> str:
    sweep_id = uuid.uuid4().hex[:12]
    io.write_json(sweep_dir / SWEEP_ID, {"id": sweep_id, "started": time.time()})
    return sweep_id


def sweep_id(sweep_dir: Path) -> Optional[str]:
    data = read_json(sweep_dir / SWEEP_ID)
    return data.get("id") if data else None


def write_job_status(job_dir: Path, status: str, sweep: Optional[str], error: Optional[str] = None,
                     **extra: Any) -> None:
    record = {"status": status, "sweep_id": sweep, "error": error, "finished": time.time(), **extra}
    io.write_json(job_dir / JOB_STATUS, {k: v for k, v in record.items() if v is not None})
