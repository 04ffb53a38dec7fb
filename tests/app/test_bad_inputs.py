"""kd-train's bad configuration values: one line naming the value, why it is wrong and the fix, before any
training. Each key of the tables below is one row of the README's "Bad input" table (tests/test_readme.py
checks that the README lists exactly the tested cases); checkpoints are in test_bad_checkpoints.py, language
models in test_lm_pipeline.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose_config
from omegaconf import open_dict

from kd_lightning.app.errors import ConfigError
from kd_lightning.app.pipeline import run


def make_cfg(tmp_path: Path, *overrides: str, name: str = "train"):
    return compose_config(tmp_path, *overrides, name=name)


# kd-train overrides (space-separated, as typed) -> what the one-line error must say.
BAD = {
    # ---------------------------------------------------------------- budgets and run settings
    "trainer.max_epochs=0": r"trainer.max_epochs=0 trains nothing.*set trainer.max_epochs to a positive",
    "trainer.max_epochs=-1": r"trainer.max_epochs=-1 trains forever without trainer.max_steps",
    "teacher_fit.max_epochs=-1": r"teacher_fit.max_epochs=-1 trains the teacher forever.*positive integer",
    "teacher_fit.max_epochs=-2": r"teacher_fit.max_epochs=-2 is not a number of epochs.*positive integer",
    "teacher_fit.max_epochs=abc": r"teacher_fit.max_epochs='abc' is not a number of epochs",
    "teacher_fit.max_epochs=0": r"teacher_fit.max_epochs=0 would test an untrained teacher.*teacher.ckpt_path",
    "teacher=torchvision teacher.weights=null teacher_fit.max_epochs=0": r"would test an untrained teacher",
    "test_ckpt=bogus": r"test_ckpt='bogus' is not a checkpoint choice; use test_ckpt=best",
    "generations=0": r"generations=0 must be a positive integer.*generations=1",
    "resume=maybe": r"resume='maybe' must be true or false",
    "seed=abc": r"seed='abc' must be an integer from 0 to 2\*\*32-1.*seed=42",
    "seed=-1": r"seed=-1 must be an integer from 0",
    "task=regression": r"task='regression' is not known; use one of classification, causal_lm",
    "optimized_metric=student/accuracy": r"optimized_metric='student/accuracy' is not a key of the summary.*student/acc",
    "assistants=[nope]": r"assistants=\[nope\]: 'nope' is not a model preset",
    "teacher.ckpt_path=/nowhere/teacher.ckpt": r"teacher.ckpt_path='/nowhere/teacher.ckpt' does not exist",
    # ---------------------------------------------------------------- trainer
    "trainer.precision=16-mixed": r"trainer.precision='16-mixed' \(float16\) needs a GPU.*bf16-mixed, bf16-true or 32-true",
    "trainer.precision=16-true": r"trainer.precision='16-true' \(float16\) needs a GPU.*bf16-mixed",
    "trainer.precision=fp8": r"trainer.precision='fp8' is not a precision Lightning knows; use one of 32-true",
    "trainer.devices=0": r"trainer.devices=0 asks for no device; set trainer.devices=1",
    "trainer.max_steps=-5": r"trainer.max_steps=-5 must be a positive integer, or -1",
    "+trainer.accumulate_grad_batches=0": r"trainer.accumulate_grad_batches=0 must be a positive integer",
    "+trainer.gradient_clip_val=-1": r"trainer.gradient_clip_val=-1 must be a number >= 0",
    "trainer.check_val_every_n_epoch=0": r"trainer.check_val_every_n_epoch=0 must be a positive integer",
    "trainer.log_every_n_steps=0": r"trainer.log_every_n_steps=0 must be a positive integer",
    "+trainer.limit_train_batches=0": r"trainer.limit_train_batches=0 trains nothing.*\(0, 1.0\]",
    "+trainer.limit_train_batches=1.5": r"trainer.limit_train_batches=1.5 trains nothing or is not a limit",
    # ---------------------------------------------------------------- optimizer
    "optim.optimizer.lr=-1": r"optim.optimizer.lr=-1 must be a positive number; set e.g. optim.optimizer.lr=0.01",
    "optim.optimizer.lr=abc": r"optim.optimizer.lr='abc' must be a positive number",
    "optim.optimizer.weight_decay=-0.1": r"optim.optimizer.weight_decay=-0.1 must be a number >= 0",
    "optim=sgd_cifar optim.optimizer.momentum=-0.5": r"optim.optimizer.momentum=-0.5 must be a number >= 0",
    # ---------------------------------------------------------------- data
    "data.num_workers=-1": r"data.num_workers=-1 must be a non-negative integer.*data.num_workers=0",
    "data.batch_size=0": r"data.batch_size=0 must be a positive integer",
    "data.batch_size=abc": r"data.batch_size='abc' must be a positive integer; set e.g. data.batch_size=64",
    "data.batch_size=1.5": r"data.batch_size=1.5 must be a positive integer",
    "data.data_seed=abc": r"data.data_seed='abc' must be an integer \(MNIST1DDataModule takes 42",
    "data.val_fraction=2": r"^data.val_fraction=2: .*data module \(MNIST1DDataModule\).*val_fraction must be in \[0, 1\), got 2",
    "data.num_classes=5": r"the labels span 10 classes but num_classes=5; set data.num_classes=10",
    "data.transfer_samples=-1": r"^data.transfer_samples=-1: .*transfer_samples must be >= 0, got -1",
    "data.transfer_seed=42": r"^data.transfer_seed=42: .*transfer_seed=42 equals data_seed.*choose another transfer_seed",
    # ---------------------------------------------------------------- models
    "student.net.channels=abc": r"student.net.channels='abc' must be an integer \(the cnn1d_16 preset uses 16\); "
                                r"set e.g. student.net.channels=16",
    "teacher.net.channels=1.5": r"teacher.net.channels=1.5 must be an integer \(the cnn1d_128 preset uses 128\)",
    "+student.net.nope=1": r"student.net.nope is not an argument of the cnn1d_16 model; its arguments are channels",
    "student.net.channels=-4": r"could not build the student network from student.net \(cnn1d_16\): .*-4",
    "teacher.net.num_classes=5": r"the teacher outputs shape \(2, 5\) but the data has 10 classes.*num_classes=10",
    # ---------------------------------------------------------------- distillation method
    "distill.temperature=0": r"^distill.temperature=0: bad distill config .*temperature must be a positive finite number, got 0",
    "distill.temperature=-1": r"^distill.temperature=-1: .*temperature must be a positive finite number, got -1",
    "distill=kd distill.temperature=abc": r"^distill.temperature='abc': .*temperature must be a positive finite number, got 'abc'",
    "distill.kd_weight=-1": r"^distill.kd_weight=-1: .*kd_weight must be a finite number >= 0, got -1",
    "distill.ce_weight=abc": r"^distill.ce_weight='abc': .*ce_weight must be a finite number >= 0, got 'abc'",
    "distill=dkd distill.beta=-1": r"^distill.beta=-1: bad distill config \(dkd\): .*beta must be a finite number >= 0, got -1",
    "distill=token_kd": r"distill=token_kd distills language models; run it with experiment=lm_pydoc",
    "+distill.teacher_outputs_top_k=-3": r"distill.teacher_outputs_top_k=-3 must be a positive number.*=null",
    "distill.teacher_outputs=true": r"distill.batch_transform changes the inputs at every step.*teacher_outputs=false",
    "distill=fitnet distill.teacher_outputs=true": r"teacher_outputs stores teacher logits only, but fitnet reads "
                                                 r"teacher features",
}


@pytest.mark.parametrize("overrides", sorted(BAD))
def test_bad_value_is_one_line_before_training(tmp_path, overrides):
    with pytest.raises(ConfigError, match=BAD[overrides]) as info:
        run(make_cfg(tmp_path, *overrides.split()))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


# Directories the run would write into: set after composing (the test helper points paths under tmp_path).
PATHS = {
    "paths.output_dir=<a path under a file>": r"paths.output_dir='.*/a_file/run' cannot be a directory: .* is a file",
    "paths.cache_dir=<a path under a file>": r"paths.cache_dir='.*/a_file/cache' cannot be a directory",
}


@pytest.mark.parametrize("case", sorted(PATHS))
def test_output_and_cache_dirs_under_a_file_are_refused(tmp_path, case):
    key = case.split("=")[0].split(".")[1]
    (tmp_path / "a_file").write_text("a file, not a directory\n")
    cfg = make_cfg(tmp_path)
    with open_dict(cfg):
        cfg.paths[key] = str(tmp_path / "a_file" / key.replace("_dir", "").replace("output", "run"))
    with pytest.raises(ConfigError, match=PATHS[case]) as info:
        run(cfg)
    assert "\n" not in str(info.value)


def test_an_unwritable_cache_dir_is_refused(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    # Root writes anywhere whatever the mode says, so the permission answer is given for it too.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked and mode & os.W_OK
                        else real_access(path, mode, **kw))
    cfg = make_cfg(tmp_path)
    with open_dict(cfg):
        cfg.paths.cache_dir = str(locked / "cache")
    with pytest.raises(ConfigError, match=r"paths.cache_dir=.* is not writable"):
        run(cfg)


# Command-line group choices: checked by the entry points before Hydra composes anything.
CHOICES = {
    "distill=nope": r"^distill=nope is not an option of the distill config group; choose one of ab, at, cc, .*kd,",
    "data=nope": r"^data=nope is not an option of the data config group; choose one of cifar10, .*mnist1d",
    "student=resnet9": r"^student=resnet9 is not an option of the student config group; .*resnet8, resnet8x4",
}


@pytest.mark.parametrize("arg", sorted(CHOICES))
def test_unknown_group_choice_is_one_line(arg):
    from kd_lightning.app.confdir import unknown_group_choice

    message = unknown_group_choice(["trainer.max_epochs=3", arg])
    assert message is not None and "\n" not in message
    assert re.search(CHOICES[arg], message), message
    assert unknown_group_choice(["-m", f"{arg.split('=')[0]}=null", "seed=1", "hydra.run.dir=x"]) is None


def test_sweeps_are_checked_choice_by_choice():
    from kd_lightning.app.confdir import unknown_group_choice

    assert unknown_group_choice(["distill=kd,dkd", "teacher=resnet8", "+experiment=mnist1d_kd"]) is None
    assert unknown_group_choice(["distill=kd,nope"]).startswith("distill=nope is not an option")
    # Values Hydra evaluates itself (a dict, a list, a quoted string, an interpolation) are not choices.
    assert unknown_group_choice(["logger={}", "callbacks=[]", "logger='csv'", "logger=${oc.env:X}"]) is None


# An ImageFolder data set with an unreadable image: the file is named (data.skip_unreadable=true skips it).
IMAGES = {"data=imagefolder (a folder holding a corrupt .png)": r"image file '.*broken.png' cannot be read.*"
                                                                r"data.skip_unreadable=true"}


@pytest.mark.parametrize("case", sorted(IMAGES))
def test_an_unreadable_image_is_named_before_training(tmp_path, case):
    from data.helpers import write_image_tree

    from kd_lightning.data.imagefolder import UnreadableImageError

    root = write_image_tree(tmp_path / "imgs")
    broken = root / "train" / "bee" / "broken.png"
    broken.write_bytes(b"garbage, not a PNG")
    overrides = ["data=imagefolder", f"data.data_dir={root}", "data.num_classes=3", "data.num_train=null",
                 "data.image_size=32", "data.batch_size=64", "data.num_workers=0", "data.persistent_workers=false",
                 "data.pin_memory=false", "teacher=resnet8", "student=resnet8"]
    with pytest.raises(UnreadableImageError, match=IMAGES[case]) as info:
        run(make_cfg(tmp_path, *overrides))
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()
    # The same folder with the option: the data module leaves the file out and the first batch goes through.
    from kd_lightning.app.build import build_datamodule, build_net
    from kd_lightning.app.checks import check_classes

    cfg = make_cfg(tmp_path, *overrides, "data.skip_unreadable=true")
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")
    check_classes(build_net(cfg.student, "student"), datamodule, "student", 3)
    assert datamodule.skipped == [str(broken)] and datamodule.num_train == 9


def test_max_epochs_zero_is_allowed_for_a_teacher_with_weights(tmp_path):
    from kd_lightning.app.checks import check_train_config

    check_train_config(make_cfg(tmp_path, "teacher_fit.max_epochs=0", "teacher=torchvision",
                                "teacher.weights=DEFAULT"))
    check_train_config(make_cfg(tmp_path, "teacher_fit.max_epochs=0", "teacher=timm", "teacher.pretrained=true"))
    check_train_config(make_cfg(tmp_path, "teacher_fit.max_epochs=0", "teacher.ckpt_path=x.ckpt"))
    check_train_config(make_cfg(tmp_path, "trainer.max_epochs=-1", "trainer.max_steps=10"))


def test_good_values_near_the_bad_ones_pass(tmp_path):
    from kd_lightning.app.build import check_argument_types, check_preset_arguments
    from kd_lightning.app.checks import check_train_config

    for overrides in (["trainer.precision=bf16-mixed"], ["trainer.precision=64-true"], ["trainer.precision=32"],
                      ["trainer.devices=-1"], ["trainer.devices=auto"], ["+trainer.gradient_clip_val=0"],
                      ["+trainer.limit_train_batches=0.5"], ["+trainer.limit_train_batches=3"], ["seed=0"]):
        check_train_config(make_cfg(tmp_path, *overrides))
    cfg = make_cfg(tmp_path, "student.net.channels=8", "data.val_fraction=0", "data.batch_size=32")
    assert check_preset_arguments(cfg.student, "student") == "cnn1d_16"
    check_argument_types(cfg.data, "data")


def test_optimized_metric_may_name_any_key_a_summary_has(tmp_path):
    from kd_lightning.app.checks import summary_keys

    cfg = make_cfg(tmp_path)
    keys = summary_keys(cfg)
    assert {"student/acc", "teacher/acc", "baseline/acc", "kd_gain", "acc_retained", "student/latency_ms"} <= keys
    assert "baseline/acc" not in summary_keys(make_cfg(tmp_path, "baseline.enabled=false"))


def cli(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / tool
    env = {**os.environ, "KD_CACHE_DIR": str(cwd / "cache"), "KD_LOG_DIR": str(cwd / "outputs"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_bad_inputs_are_one_line_without_traceback(tmp_path):
    for tool, args, expected in (("kd-train", ["generations=0"], "kd-train: error: generations=0 must be"),
                                 ("kd-train", ["distill=nope"], "kd-train: error: distill=nope is not an option"),
                                 ("kd-eval", ["trainer=nope"], "kd-eval: error: trainer=nope is not an option"),
                                 ("kd-train", ["seed=abc"], "kd-train: error: seed='abc' must be an integer")):
        proc = cli(tool, *args, cwd=tmp_path)
        assert proc.returncode != 0 and expected in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and "Available options" not in proc.stderr
        assert sum(line.startswith(f"{tool}: error:") for line in proc.stderr.splitlines()) == 1
