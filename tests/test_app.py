"""The Hydra application: config composition, kd-train stages, kd-eval, kd-export, sweeps, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from kd_lightning.app.confdir import CONFIG_DIR
from kd_lightning.app.errors import ConfigError
from kd_lightning.app.pipeline import run

GROUPS = ["data", "teacher", "student", "distill", "module", "optim", "trainer", "callbacks", "logger", "recipe",
          "pair", "experiment", "hparams_search", "debug"]
# Tiny but real budgets: enough steps that every stage trains, validates and tests.
FAST = ["trainer.max_epochs=2", "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0"]


def options(group: str):
    """The choices Hydra offers for ``group`` (files in conf/ and the registry's model presets)."""
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def make_cfg(tmp_path: Path, *overrides: str, name: str = "train"):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    return cfg


def cli(tool: str, *args: str, cwd: Path, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / tool
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", f"kd_lightning.app.{tool.split('-')[1]}"]
    env = {**os.environ, "KD_CACHE_DIR": str(cwd / "cache"), "KD_LOG_DIR": str(cwd / "outputs"),
           "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group, tmp_path):
    from kd_lightning.models import list_models, model_entry

    names = options(group)
    assert names, f"conf/{group} has no options"
    lm_models = {n for n in list_models() if model_entry(n).task == "causal_lm"}
    for name in names:
        # Language-model data and models compose with the LM experiment (they read data.vocab_size).
        lm_only = name.startswith("lm_") if group == "data" else name in lm_models and group in ("teacher", "student")
        cfg = make_cfg(tmp_path, *(["experiment=lm_pydoc"] if lm_only else []), f"{group}={name}")
        # Resolve everything but the hydra-runtime and environment-dependent paths.
        for key in ("data", "teacher", "student", "distill", "optim"):
            OmegaConf.to_container(cfg[key], resolve=True)


def test_teacher_and_student_choices_are_the_registry_and_no_private_bases():
    from kd_lightning.models import list_models

    assert options("teacher") == options("student") == list_models()
    for group in GROUPS:
        assert not [o for o in options(group) if o.startswith("_")], group


def test_default_models_match_the_paper_and_compress_10x(tmp_path):
    from hydra.utils import instantiate

    count = lambda m: sum(p.numel() for p in m.parameters())
    paper = {"cnn1d_25": 5210, "mlp": 15210}
    for preset, n in paper.items():
        cfg = make_cfg(tmp_path, f"student={preset}")
        assert count(instantiate(cfg.student.net)) == n
    cfg = make_cfg(tmp_path)
    assert count(instantiate(cfg.teacher.net)) >= 10 * count(instantiate(cfg.student.net))


def test_pipeline_runs_stages_reports_and_reuses_the_teacher(tmp_path):
    cfg = make_cfg(tmp_path, *FAST)
    summary = run(cfg)
    out = Path(cfg.paths.output_dir)
    for f in ("summary.json", "summary.md", "summary.png", "student.ckpt"):
        assert (out / f).is_file(), f
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["teacher"]["source"] == "trained"
    for stage in ("teacher", "baseline", "student"):
        s = on_disk[stage]
        assert 0.0 <= s["acc"] <= 1.0 and s["params"] > 0 and s["size_bytes"] > 0 and s["latency_ms"] > 0
        assert s["wall_s"] >= 0 and len(s["val_curve"]) == 2
    assert on_disk["compression"] == pytest.approx(on_disk["teacher"]["params"] / on_disk["student"]["params"], rel=1e-3)
    assert on_disk["acc_retained"] == pytest.approx(on_disk["student"]["acc"] / on_disk["teacher"]["acc"], abs=1e-3)
    assert summary["student"]["acc"] == on_disk["student"]["acc"]
    # The student checkpoint holds the student alone.
    ckpt = torch.load(out / "student.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all(k.startswith("student.") for k in ckpt["state_dict"])
    assert "kd_config" in ckpt
    # A second run with another distillation setting reuses the cached teacher.
    cfg2 = make_cfg(tmp_path, *FAST, "distill.temperature=2", "baseline.enabled=false")
    with open_dict(cfg2):
        cfg2.paths.output_dir = str(tmp_path / "run2")
    again = run(cfg2)
    assert again["teacher"]["source"] == "cache"
    assert again["teacher"]["acc"] == pytest.approx(on_disk["teacher"]["acc"])
    assert "baseline" not in again


def test_given_teacher_checkpoint_is_used_and_checked(tmp_path):
    cfg = make_cfg(tmp_path, *FAST, "baseline.enabled=false")
    first = run(cfg)
    teacher_ckpt = first["teacher"]["ckpt_path"]
    cfg2 = make_cfg(tmp_path, *FAST, "baseline.enabled=false", f"teacher.ckpt_path={teacher_ckpt}")
    with open_dict(cfg2):
        cfg2.paths.output_dir = str(tmp_path / "run2")
    second = run(cfg2)
    assert second["teacher"]["source"] == "checkpoint"
    assert second["teacher"]["acc"] == pytest.approx(first["teacher"]["acc"])
    # The same checkpoint against data with another class count is refused before training.
    bad = make_cfg(tmp_path, *FAST, "data.num_classes=7", f"teacher.ckpt_path={teacher_ckpt}")
    with pytest.raises((ConfigError, ValueError), match="num_classes|classes"):
        run(bad)


def test_bad_temperature_and_missing_checkpoint_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="temperature"):
        run(make_cfg(tmp_path, "distill.temperature=0"))
    with pytest.raises(ConfigError, match="does not exist"):
        run(make_cfg(tmp_path, "teacher.ckpt_path=/nonexistent/teacher.ckpt"))
    assert not (tmp_path / "run" / "teacher").exists()


def test_mismatched_class_count_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="10 classes"):
        run(make_cfg(tmp_path, "student.net.num_classes=7"))
    assert not (tmp_path / "run" / "teacher").exists()


@pytest.mark.parametrize("method", options("distill"))
def test_every_distill_method_runs_one_step(method, tmp_path):
    lm = ["experiment=lm_pydoc", "data.seq_len=32", "data.vocab_size=300"] if method == "token_kd" else []
    cfg = make_cfg(tmp_path, *lm, f"distill={method}", "debug=fast_dev_run", "baseline.enabled=false")
    summary = run(cfg)
    assert summary["student"]["ppl"] > 1 if lm else 0.0 <= summary["student"]["acc"] <= 1.0


def test_digits_data_set(tmp_path):
    cfg = make_cfg(tmp_path, "data=digits", "teacher=mlp_digits_large", "student=mlp_digits", *FAST)
    summary = run(cfg)
    assert summary["teacher"]["acc"] > 0.3  # 8 steps of a wide MLP already beat chance (10%) by far


@pytest.mark.slow
def test_cli_train_eval_export(tmp_path):
    proc = cli("kd-train", *FAST, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "Compression" in proc.stdout
    ev = cli("kd-eval", f"ckpt_path={run_dir / 'student.ckpt'}", "hydra.run.dir=eval", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert f"test/acc: {summary['student']['acc']:.4f}" in ev.stdout
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        ex = cli("kd-export", f"ckpt_path={run_dir / 'student.ckpt'}", f"format={fmt}", "hydra.run.dir=export",
                 cwd=tmp_path)
        assert ex.returncode == 0, ex.stderr[-3000:]
        assert (run_dir / f"student{suffix}").is_file() and "outputs match" in ex.stdout


@pytest.mark.slow
def test_cli_errors_are_one_clear_line(tmp_path):
    proc = cli("kd-train", "distill.temperature=-1", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode != 0
    assert "temperature must be a positive" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("kd-train", "teacher=no_such_net", cwd=tmp_path)
    assert proc.returncode != 0 and "no_such_net" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("kd-train", "teacher.ckpt_path=missing.ckpt", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode != 0 and "missing.ckpt" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_multirun_writes_sweep_summary(tmp_path):
    proc = cli("kd-train", "-m", "distill.temperature=1,4", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    rows = (sweep / "sweep_summary.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "distill.temperature" in rows[0] and "student/acc" in rows[0]
    assert (sweep / "sweep_summary.md").is_file() and (sweep / "sweep_summary.png").is_file()
    # The teacher is trained once and reused by the second job.
    sources = [json.loads((sweep / j / "summary.json").read_text())["teacher"]["source"] for j in ("0", "1")]
    assert sources == ["trained", "cache"]


@pytest.mark.slow
def test_optuna_search_two_trials(tmp_path):
    proc = cli("kd-train", "hparams_search=mnist1d_optuna", "hydra.sweeper.n_trials=2", "baseline.enabled=false",
               *FAST, "hydra.sweep.dir=search", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = OmegaConf.load(tmp_path / "search" / "optimization_results.yaml")
    assert "best_params" in results and "distill.temperature" in results.best_params
    assert 0.0 <= float(results.best_value) <= 1.0


def test_teacher_assistant_chain_and_born_again_generations(tmp_path):
    cfg = make_cfg(tmp_path, *FAST, "baseline.enabled=false", "assistants=[cnn1d_25]", "generations=2")
    summary = run(cfg)
    (assistant,) = summary["assistants"]
    assert assistant["source"] == "cnn1d_25" and assistant["params"] == 5210
    assert len(summary["generations"]) == 2
    assert summary["student"] == summary["generations"][-1]
    out = Path(cfg.paths.output_dir)
    assert (out / "assistant1").is_dir() and (out / "student_gen2").is_dir()
