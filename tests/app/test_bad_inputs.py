"""Bad inputs get one line naming the value, why it is wrong and the fix, before any training."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose_config
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from kd_lightning.app.errors import ConfigError
from kd_lightning.app.pipeline import run


def make_cfg(tmp_path: Path, *overrides: str, name: str = "train"):
    return compose_config(tmp_path, *overrides, name=name)


BAD = {
    "trainer.max_epochs=0": r"trainer.max_epochs=0 trains nothing.*set trainer.max_epochs to a positive",
    "teacher_fit.max_epochs=-1": r"teacher_fit.max_epochs=-1 trains the teacher forever.*positive integer",
    "teacher_fit.max_epochs=-2": r"teacher_fit.max_epochs=-2 is not a number of epochs.*positive integer",
    "teacher_fit.max_epochs=0": r"teacher_fit.max_epochs=0 would test an untrained teacher.*teacher.ckpt_path",
    "test_ckpt=bogus": r"test_ckpt='bogus' is not a checkpoint choice; use test_ckpt=best",
    "generations=0": r"generations=0 must be a positive integer.*generations=1",
    "optim.optimizer.lr=-1": r"optim.optimizer.lr=-1 must be a positive number; set e.g. optim.optimizer.lr=0.01",
    "optim.optimizer.weight_decay=-0.1": r"optim.optimizer.weight_decay=-0.1 must be a number >= 0",
    "data.num_workers=-1": r"data.num_workers=-1 must be a non-negative integer.*data.num_workers=0",
    "data.batch_size=0": r"data.batch_size=0 must be a positive integer",
    "+distill.teacher_cache_top_k=-3": r"distill.teacher_cache_top_k=-3 must be a positive number.*=null",
    "optimized_metric=student/accuracy": r"optimized_metric='student/accuracy' is not a key of the summary.*student/acc",
    "assistants=[nope]": r"assistants=\[nope\]: 'nope' is not a model preset",
    "resume=maybe": r"resume='maybe' must be true or false",
}


@pytest.mark.parametrize("override", sorted(BAD))
def test_bad_value_is_one_line_before_training(tmp_path, override):
    with pytest.raises(ConfigError, match=BAD[override]) as info:
        run(make_cfg(tmp_path, override))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_max_epochs_zero_is_allowed_for_a_teacher_with_weights(tmp_path):
    from kd_lightning.app.checks import check_train_config

    check_train_config(make_cfg(tmp_path, "teacher_fit.max_epochs=0", "teacher=torchvision",
                                "teacher.weights=DEFAULT"))
    check_train_config(make_cfg(tmp_path, "teacher_fit.max_epochs=0", "teacher=timm", "teacher.pretrained=true"))
    check_train_config(make_cfg(tmp_path, "teacher_fit.max_epochs=0", "teacher.ckpt_path=x.ckpt"))
    check_train_config(make_cfg(tmp_path, "trainer.max_epochs=-1", "trainer.max_steps=10"))
    with pytest.raises(ConfigError, match="untrained teacher"):
        check_train_config(make_cfg(tmp_path, "teacher_fit.max_epochs=0", "teacher=torchvision",
                                    "teacher.weights=null"))
    with pytest.raises(ConfigError, match="trains forever"):
        check_train_config(make_cfg(tmp_path, "trainer.max_epochs=-1"))


def test_optimized_metric_may_name_any_key_a_summary_has(tmp_path):
    from kd_lightning.app.checks import summary_keys

    cfg = make_cfg(tmp_path)
    keys = summary_keys(cfg)
    assert {"student/acc", "teacher/acc", "baseline/acc", "kd_gain", "acc_retained", "student/latency_ms"} <= keys
    assert "baseline/acc" not in summary_keys(make_cfg(tmp_path, "baseline.enabled=false"))


# ------------------------------------------------------------------------------- damaged checkpoints
def _teacher_ckpt(tmp_path: Path) -> Path:
    cfg = make_cfg(tmp_path)
    net = instantiate(cfg.teacher.net)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": {f"student.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def _student_ckpt(tmp_path: Path) -> Path:
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


MESSAGES = {"empty": r"is empty \(0 bytes\)", "truncated": r"cannot be read, it is truncated",
            "text": r"cannot be read, it is truncated or not a torch checkpoint"}


@pytest.mark.parametrize("how", sorted(MESSAGES))
def test_damaged_teacher_checkpoint_is_named(tmp_path, how):
    path = damage(_teacher_ckpt(tmp_path), how)
    with pytest.raises(ConfigError, match=f"teacher.ckpt_path: checkpoint '{path}'.*{MESSAGES[how]}") as info:
        run(make_cfg(tmp_path, f"teacher.ckpt_path={path}"))
    assert "\n" not in str(info.value)


def test_teacher_checkpoint_of_another_architecture_lists_the_first_mismatched_keys(tmp_path):
    path = _teacher_ckpt(tmp_path)
    with pytest.raises(ConfigError, match=r"does not fit CNN1D \((missing|unexpected|shape).*(\+\d+ more)?") as info:
        run(make_cfg(tmp_path, f"teacher.ckpt_path={path}", "teacher=cnn1d_16"))
    message = str(info.value)
    assert str(path) in message and "blocks." in message and "\n" not in message


@pytest.mark.parametrize("how", sorted(MESSAGES))
@pytest.mark.parametrize("tool", ["eval", "export"])
def test_damaged_student_checkpoint_is_named_by_eval_and_export(tmp_path, how, tool):
    from kd_lightning.app.checkpoint import load_student

    path = damage(_student_ckpt(tmp_path), how)
    with pytest.raises(ConfigError, match=f"ckpt_path: checkpoint '{path}'.*{MESSAGES[how]}"):
        load_student(make_cfg(tmp_path, f"ckpt_path={path}", name=tool))


def test_student_checkpoint_mismatch_lists_keys(tmp_path):
    from kd_lightning.app.checkpoint import load_student

    path = _student_ckpt(tmp_path)
    cfg = make_cfg(tmp_path, f"ckpt_path={path}", "student=cnn1d_128", "use_ckpt_config=false", name="eval")
    with pytest.raises(ConfigError, match=r"does not fit the student CNN1D \(shape checkpoint vs model: "):
        load_student(cfg)


@pytest.mark.parametrize("tool", ["eval", "export"])
def test_missing_ckpt_path_is_one_line(tmp_path, tool):
    from kd_lightning.app.checkpoint import load_student

    with pytest.raises(ConfigError, match="ckpt_path is not set: pass the checkpoint"):
        load_student(make_cfg(tmp_path, name=tool))


def cli(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / tool
    env = {**os.environ, "KD_CACHE_DIR": str(cwd / "cache"), "KD_LOG_DIR": str(cwd / "outputs"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_bad_inputs_are_one_line_without_traceback(tmp_path):
    proc = cli("kd-eval", cwd=tmp_path)
    assert proc.returncode != 0 and "kd-eval: error: ckpt_path is not set" in proc.stderr
    assert "Traceback" not in proc.stderr and "MissingMandatoryValue" not in proc.stderr
    path = damage(_student_ckpt(tmp_path), "truncated")
    proc = cli("kd-export", f"ckpt_path={path}", cwd=tmp_path)
    assert proc.returncode != 0 and f"kd-export: error: ckpt_path: checkpoint '{path}'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("kd-train", "generations=0", cwd=tmp_path)
    assert proc.returncode != 0 and "kd-train: error: generations=0 must be a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr
