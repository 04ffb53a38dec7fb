"""Damaged, missing or mismatched checkpoints given to kd-train (teacher.ckpt_path), kd-eval and kd-export:
one line naming the file, what is wrong with it and the fix. Each key of CASES is a row of the README's
"Bad input" table (tests/test_readme.py checks the two agree)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from helpers import compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kd_lightning.app.errors import ConfigError


def make_cfg(tmp_path: Path, *overrides: str, name: str = "train"):
    return compose_config(tmp_path, *overrides, name=name)


def teacher_ckpt(tmp_path: Path) -> Path:
    """A teacher checkpoint of the default teacher (cnn1d_128), as kd-train's teacher cache writes it."""
    net = instantiate(make_cfg(tmp_path).teacher.net)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": {f"student.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def student_ckpt(tmp_path: Path) -> Path:
    """A student.ckpt of the default student (cnn1d_16) with the config that built it, as kd-train writes it."""
    cfg = make_cfg(tmp_path)
    net = instantiate(cfg.student.net)
    path = tmp_path / "student.ckpt"
    torch.save({"state_dict": {f"student.{k}": v for k, v in net.state_dict().items()},
                "kd_config": OmegaConf.to_container(cfg, resolve=False)}, path)
    return path


def damage(path: Path, how: str) -> Path:
    raw = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "text":
        path.write_text("not a checkpoint\n")
    return path


Setup = Callable[[Path], Tuple[str, List[str]]]  # tmp_path -> (tool, overrides)


def _damaged(tool: str, how: str) -> Setup:
    def setup(tmp: Path) -> Tuple[str, List[str]]:
        if tool == "train":
            return tool, [f"teacher.ckpt_path={damage(teacher_ckpt(tmp), how)}"]
        return tool, [f"ckpt_path={damage(student_ckpt(tmp), how)}"]
    return setup


EMPTY, TRUNCATED = r"is empty \(0 bytes\)", r"cannot be read, it is truncated or not a torch checkpoint"

# README input -> (how the test makes it, what the one-line error must say)
CASES: Dict[str, Tuple[Setup, str]] = {
    "teacher.ckpt_path=<empty file>": (_damaged("train", "empty"), rf"teacher.ckpt_path: checkpoint '.*' {EMPTY}"),
    "teacher.ckpt_path=<truncated file>": (_damaged("train", "truncated"),
                                           rf"teacher.ckpt_path: checkpoint '.*teacher.ckpt' .*{TRUNCATED}"),
    "teacher.ckpt_path=<text file>": (_damaged("train", "text"), rf"teacher.ckpt_path: checkpoint '.*' .*{TRUNCATED}"),
    "teacher.ckpt_path=<a cnn1d_128 checkpoint> teacher=cnn1d_16": (
        lambda tmp: ("train", [f"teacher.ckpt_path={teacher_ckpt(tmp)}", "teacher=cnn1d_16"]),
        r"teacher.ckpt.* does not fit CNN1D \((missing|unexpected|shape).*blocks\."),
    "kd-eval": (lambda tmp: ("eval", []), r"ckpt_path is not set: pass the checkpoint to use"),
    "kd-export": (lambda tmp: ("export", []), r"ckpt_path is not set: pass the checkpoint to use"),
    "kd-eval ckpt_path=/nowhere/student.ckpt": (lambda tmp: ("eval", ["ckpt_path=/nowhere/student.ckpt"]),
                                                r"ckpt_path='/nowhere/student.ckpt' does not exist"),
    "kd-eval ckpt_path=<empty file>": (_damaged("eval", "empty"), rf"ckpt_path: checkpoint '.*student.ckpt' {EMPTY}"),
    "kd-eval ckpt_path=<truncated file>": (_damaged("eval", "truncated"), rf"ckpt_path: checkpoint '.*' .*{TRUNCATED}"),
    "kd-eval ckpt_path=<text file>": (_damaged("eval", "text"), rf"ckpt_path: checkpoint '.*' .*{TRUNCATED}"),
    "kd-export ckpt_path=<empty file>": (_damaged("export", "empty"), rf"ckpt_path: checkpoint '.*' {EMPTY}"),
    "kd-export ckpt_path=<truncated file>": (_damaged("export", "truncated"),
                                             rf"ckpt_path: checkpoint '.*' .*{TRUNCATED}"),
    "kd-export ckpt_path=<text file>": (_damaged("export", "text"), rf"ckpt_path: checkpoint '.*' .*{TRUNCATED}"),
    "kd-eval ckpt_path=<a cnn1d_16 student> student=cnn1d_128 use_ckpt_config=false": (
        lambda tmp: ("eval", [f"ckpt_path={student_ckpt(tmp)}", "student=cnn1d_128", "use_ckpt_config=false"]),
        r"does not fit the student CNN1D \(shape checkpoint vs model: .*pass the student=<preset>"),
    "kd-export format=tflite": (lambda tmp: ("export", [f"ckpt_path={student_ckpt(tmp)}", "format=tflite"]),
                                r"format='tflite' is not supported; use format=onnx or format=torchscript"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoint_is_one_line_naming_it(tmp_path, case):
    setup, expected = CASES[case]
    tool, overrides = setup(tmp_path)
    cfg = make_cfg(tmp_path, *overrides, name=tool)
    with pytest.raises(ConfigError, match=expected) as info:
        if tool == "train":
            from kd_lightning.app.pipeline import run

            run(cfg)
        elif tool == "eval":
            from kd_lightning.app.eval import evaluate

            evaluate(cfg)
        else:
            from kd_lightning.app.export import export

            export(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "teacher").exists()  # nothing trained
