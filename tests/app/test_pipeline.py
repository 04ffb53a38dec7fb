"""kd_lightning/app/pipeline.py: kd-train's stages (teacher, baseline, student, assistants, generations), the summary
they report, teacher reuse, the transfer set and the teacher cache, and bad input refused before training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from cache.helpers import Arrays, make_teacher
from kd_lightning.app.errors import ConfigError
from kd_lightning.app.pipeline import run
from kd_lightning.app.stage import state_dict_bytes
from kd_lightning.augment import Mixup
from kd_lightning.cache import TeacherOutputsDataModule

from .helpers import FAST, options


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def n_test_samples(cfg) -> int:
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("test")
    return len(dm.test_dataloader().dataset)


def test_pipeline_runs_stages_reports_and_reuses_the_teacher(compose, tmp_path):
    cfg = compose(*FAST)
    summary = run(cfg)
    out = Path(cfg.paths.output_dir)
    for f in ("summary.json", "summary.md", "summary.png", "student.ckpt"):
        assert (out / f).is_file(), f
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["teacher"]["source"] == "trained"
    n_test = n_test_samples(cfg)
    for stage, node in (("teacher", cfg.teacher), ("baseline", cfg.student), ("student", cfg.student)):
        s = on_disk[stage]
        net = instantiate(node.net)
        # the reported size is the network's, and the accuracy a count of correct test samples
        assert s["params"] == n_params(net) and s["size_bytes"] == state_dict_bytes(net), (stage, s)
        assert s["acc"] * n_test == pytest.approx(round(s["acc"] * n_test), abs=1e-3), (stage, s["acc"], n_test)
        assert s["latency_ms"] > 0 and s["wall_s"] >= 0 and len(s["val_curve"]) == 2
    assert on_disk["teacher"]["params"] >= 10 * on_disk["student"]["params"]
    assert on_disk["baseline"]["params"] == on_disk["student"]["params"]
    assert on_disk["size_ratio"] == pytest.approx(on_disk["teacher"]["size_bytes"] / on_disk["student"]["size_bytes"],
                                                  abs=1e-3)
    assert on_disk["kd_gain"] == pytest.approx(on_disk["student"]["acc"] - on_disk["baseline"]["acc"], abs=1e-4)
    assert on_disk["compression"] == pytest.approx(on_disk["teacher"]["params"] / on_disk["student"]["params"], rel=1e-3)
    assert on_disk["acc_retained"] == pytest.approx(on_disk["student"]["acc"] / on_disk["teacher"]["acc"], abs=1e-3)
    assert summary["student"]["acc"] == on_disk["student"]["acc"]
    # The student checkpoint holds the student alone.
    ckpt = torch.load(out / "student.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all(k.startswith("student.") for k in ckpt["state_dict"])
    assert "kd_config" in ckpt
    # A second run with another distillation setting reuses the cached teacher.
    cfg2 = compose(*FAST, "distill.temperature=2", "baseline.enabled=false")
    with open_dict(cfg2):
        cfg2.paths.output_dir = str(tmp_path / "run2")
    again = run(cfg2)
    assert again["teacher"]["source"] == "store"
    assert again["teacher"]["acc"] == pytest.approx(on_disk["teacher"]["acc"])
    assert "baseline" not in again


def test_given_teacher_checkpoint_is_used_and_checked(compose, tmp_path):
    cfg = compose(*FAST, "baseline.enabled=false")
    first = run(cfg)
    teacher_ckpt = first["teacher"]["ckpt_path"]
    cfg2 = compose(*FAST, "baseline.enabled=false", f"teacher.ckpt_path={teacher_ckpt}")
    with open_dict(cfg2):
        cfg2.paths.output_dir = str(tmp_path / "run2")
    second = run(cfg2)
    assert second["teacher"]["source"] == "checkpoint"
    assert second["teacher"]["acc"] == pytest.approx(first["teacher"]["acc"])
    # The same checkpoint against data with another class count is refused before training.
    bad = compose(*FAST, "data.num_classes=7", f"teacher.ckpt_path={teacher_ckpt}")
    with pytest.raises((ConfigError, ValueError), match="num_classes|classes"):
        run(bad)


def test_bad_temperature_and_missing_checkpoint_fail_before_training(compose, tmp_path):
    with pytest.raises(ConfigError, match="temperature"):
        run(compose("distill.temperature=0"))
    with pytest.raises(ConfigError, match="does not exist"):
        run(compose("teacher.ckpt_path=/nonexistent/teacher.ckpt"))
    assert not (tmp_path / "run" / "teacher").exists()


def test_mismatched_class_count_fails_before_training(compose, tmp_path):
    with pytest.raises(ConfigError, match="10 classes"):
        run(compose("student.net.num_classes=7"))
    assert not (tmp_path / "run" / "teacher").exists()


@pytest.mark.parametrize("method", options("distill"))
def test_every_distill_method_runs_one_step(compose, method):
    # Language-model methods run on lm_pydoc; the cross-tokenizer ones with a student tokenizer of its own.
    lm_runs = {"token_kd": ["experiment=lm_pydoc"],
               **{m: ["experiment=lm_pydoc_xtok", "student_tokenizer.vocab_size=280"] for m in ("uld", "span_align")}}
    lm = [*lm_runs[method], "data.seq_len=32", "data.vocab_size=300"] if method in lm_runs else []
    cfg = compose(*lm, f"distill={method}", "debug=fast_dev_run", "baseline.enabled=false")
    summary = run(cfg)
    assert summary["distill"]["name"] == cfg.distill.name
    assert summary["student"]["params"] == n_params(instantiate(cfg.student.net))
    if lm:  # a language model reports perplexity, at least 1 and at most the vocabulary's uniform guess
        assert 1.0 < summary["student"]["ppl"] <= 300 * 1.5


def test_digits_data_set(compose):
    cfg = compose("data=digits", "teacher=mlp_digits_large", "student=mlp_digits", *FAST)
    summary = run(cfg)
    assert summary["teacher"]["acc"] > 0.3  # 8 steps of a wide MLP already beat chance (10%) by far


def test_teacher_assistant_chain_and_born_again_generations(compose):
    cfg = compose(*FAST, "baseline.enabled=false", "assistants=[cnn1d_25]", "generations=2")
    summary = run(cfg)
    (assistant,) = summary["assistants"]
    assert assistant["source"] == "cnn1d_25" and assistant["params"] == 5210
    assert len(summary["generations"]) == 2
    assert summary["student"] == summary["generations"][-1]
    out = Path(cfg.paths.output_dir)
    assert (out / "assistant1").is_dir() and (out / "student_gen2").is_dir()


@pytest.mark.slow
def test_ddp_sim_matches_a_single_process(compose, tmp_path):
    """Same seed, same global batch (2 x 32 vs 64), same teacher: test accuracy within 5 points.

    The digits MLPs converge in a few hundred steps, so the comparison is made where the two runs'
    different shuffling orders no longer matter (on an unconverged curve they can differ by more).
    """
    common = ["data=digits", "teacher=mlp_digits_large", "student=mlp_digits", "trainer.max_epochs=15",
              "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
              "trainer.num_sanity_val_steps=0", "baseline.enabled=false", "logger=csv", "test_ckpt=last"]

    def cfg_for(name, *overrides):
        cfg = compose(*common, *overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
            cfg.paths.cache_dir = str(tmp_path / "cache")
        return cfg

    single = run(cfg_for("single", "trainer=cpu", "data.batch_size=64"))
    teacher_ckpt = single["teacher"]["ckpt_path"]
    assert Path(teacher_ckpt).is_file()
    ddp = run(cfg_for("ddp", "trainer=ddp_sim", "data.batch_size=32", f"teacher.ckpt_path={teacher_ckpt}"))
    # Same teacher; under DDP the test split (359 samples) is padded to an even count by one repeat.
    assert ddp["teacher"]["acc"] == pytest.approx(single["teacher"]["acc"], abs=0.003), "the same teacher"
    assert single["student"]["acc"] > 0.8, single["student"]
    assert abs(ddp["student"]["acc"] - single["student"]["acc"]) <= 0.05, (single["student"], ddp["student"])


def test_app_teacher_outputs_reject_feature_objectives_and_topk_logit_mse(compose, tmp_path):
    from kd_lightning.app.build import build_loss
    from kd_lightning.app.tasks import task_for

    def task_and_loss(*overrides):
        cfg = compose("experiment=mnist1d_kd", *overrides)  # the default recipe's Mixup needs a live teacher
        return cfg, task_for(cfg.task, cfg), build_loss(cfg.distill)

    off, task, loss = task_and_loss()
    assert off.distill.teacher_outputs is False
    task.check_config(off, loss)
    assert task.teacher_outputs(make_teacher(), loss, Arrays()) is None
    fit, task, loss = task_and_loss("distill=fitnet", "distill.teacher_outputs=true")
    with pytest.raises(ConfigError, match="teacher features"):
        task.check_config(fit, loss)
    mse, task, loss = task_and_loss("distill=logit_mse", "distill.teacher_outputs=true",
                                    "distill.teacher_outputs_top_k=3")
    with pytest.raises(ConfigError, match="raw teacher logits"):
        task.check_config(mse, loss)
    kd, task, loss = task_and_loss("distill.teacher_outputs=true")
    task.check_config(kd, loss)
    dm = task.teacher_outputs(make_teacher(), loss, Arrays())
    assert isinstance(dm, TeacherOutputsDataModule)
    assert all(str(c.directory).startswith(str(tmp_path / "cache" / "teacher_outputs")) for c in dm.outputs.values())


def test_app_gives_the_transfer_set_to_the_student_stage_only(compose, tmp_path, monkeypatch):
    from kd_lightning.app import pipeline, stages as stages_module

    cfg = compose("data=mnist1d_transfer", "data.transfer_samples=300", "distill=function_matching",
                  "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                  "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0",
                  "logger=none", "callbacks=none")
    stages = {}
    real = stages_module.fit_and_test

    def spy(stage, trainer, module, datamodule, net, *a, **kw):
        batch = next(iter(datamodule.train_dataloader()))
        stages[stage] = (type(datamodule).__name__, len(datamodule.train_dataloader().dataset), module, batch)
        return real(stage, trainer, module, datamodule, net, *a, **kw)

    monkeypatch.setattr(stages_module, "fit_and_test", spy)
    pipeline.run(cfg)
    assert stages["teacher"][:2] == ("MNIST1DDataModule", 3600)
    assert stages["baseline"][:2] == ("MNIST1DDataModule", 3600)
    assert stages["student"][:2] == ("TransferDataModule", 3900)
    assert isinstance(stages["student"][2].batch_transform, Mixup)
    assert stages["baseline"][2].batch_transform is None
    assert not isinstance(stages["baseline"][3], dict)  # (x, y) tuples: no unlabeled samples


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_true_precisions_run_every_stage_and_leave_the_networks_in_their_dtype(compose, precision):
    # The teacher trains in float64 (or bfloat16); the student stage pairs it with a student built in float32.
    summary = run(compose(*FAST, f"trainer.precision={precision}", "teacher_fit.use_store=false"))
    assert summary["teacher"]["source"] == "trained"
    assert all(summary[s]["acc"] > 0 and summary[s]["latency_ms"] > 0 for s in ("teacher", "baseline", "student"))
