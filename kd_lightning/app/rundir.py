"""A run owns its directory; a sweep owns its job directories.

``<run dir>/.kd_run.json`` records the fingerprint of the config that writes there (Hydra's
``.hydra/config.yaml`` cannot serve: Hydra rewrites it before the task starts). A run refuses a
directory that already holds outputs of another config; the same config may run there again (with
``resume=true`` it continues the run). Every job of a sweep writes ``job_status.json`` with its sweep's
id, so the sweep summary lists this sweep's jobs only.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from .. import io
from .errors import ConfigError

FINGERPRINT = ".kd_run.json"
JOB_STATUS = "job_status.json"
SWEEP_ID = ".kd_sweep.json"
# What Hydra and kd-train put into a run directory before the run writes any output.
_OWN = {".hydra", FINGERPRINT, JOB_STATUS}
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


def claim(cfg: DictConfig) -> bool:
    """Make ``paths.output_dir`` this run's, or raise :class:`ConfigError`; True when it holds this config's
    earlier outputs (what ``resume=true`` continues)."""
    out = Path(cfg.paths.output_dir)
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
