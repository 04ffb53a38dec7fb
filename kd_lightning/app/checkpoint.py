"""Reading a saved student back: its weights and, for kd-train's student.ckpt, the config that built it."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from .build import build_net
from .errors import ConfigError
from ..teacher import describe_mismatch, load_state_dict_file, read_checkpoint


def load_student(cfg: DictConfig) -> Tuple[nn.Module, DictConfig]:
    """Build the student network described by ``cfg`` (or by the checkpoint's own config) and load it."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path is not set: pass the checkpoint to use, e.g. "
                          "ckpt_path=outputs/train/runs/<run>/student.ckpt")
    path = Path(str(cfg.ckpt_path))
    if not path.is_file():
        raise ConfigError(f"ckpt_path={str(path)!r} does not exist; pass a student.ckpt written by kd-train")
    try:
        blob = read_checkpoint(path)
    except ValueError as err:
        raise ConfigError(f"ckpt_path: {err}") from None
    stored = blob.get("kd_config") if isinstance(blob, dict) else None
    if stored and cfg.get("use_ckpt_config", True):
        stored = OmegaConf.create(stored)
        with open_dict(cfg):
            cfg.data = stored.data
            cfg.student = stored.student
            cfg.task = stored.get("task", cfg.get("task"))
            # A language-model student with a tokenizer of its own reads the data with it.
            cfg.student_tokenizer = stored.get("student_tokenizer")
            cfg.student.ckpt_path = None
    net = build_net(cfg.student, "student")
    try:
        state = load_state_dict_file(path)
    except ValueError as err:
        raise ConfigError(f"ckpt_path: {err}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = describe_mismatch(net, state) or str(err).splitlines()[0]
        raise ConfigError(
            f"{path} does not fit the student {type(net).__name__} ({detail}); pass the "
            "student=<preset> and data=<name> the checkpoint was trained with") from None
    return net, cfg
