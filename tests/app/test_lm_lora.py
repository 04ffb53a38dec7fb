"""kd-train experiment=lm_pydoc_lora: a LoRA student through the whole LM process, its adapter and merged exports."""
from __future__ import annotations

import json

import pytest

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from kd_lightning.app.confdir import CONFIG_DIR  # noqa: E402
from kd_lightning.app.pipeline import run  # noqa: E402

from .test_lm_pipeline import TINY, TINY_TEACHER  # noqa: E402


def _lora_cfg(tmp_path, *overrides):
    overrides = ["experiment=lm_pydoc_lora" if o == "experiment=lm_pydoc" else o for o in TINY] + list(overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    return cfg


@pytest.mark.slow
def test_lora_student_runs_through_kd_train_and_exports_adapter_and_merged_model(tmp_path):
    import transformers

    import lightning as L
    import torch

    from kd_lightning.app.build import build_net
    from kd_lightning.teacher import load_state_dict_file

    cfg = _lora_cfg(tmp_path, *TINY_TEACHER, "student.lora.r=2", "student.lora.export_merged=true")
    summary = run(cfg)
    out = tmp_path / "run"
    assert summary["student"]["ppl"] > 1 and summary["baseline"]["ppl"] > 1
    # The distilled student's base is the one it started from (built again with the stage's seed); its adapters trained.
    L.seed_everything(cfg.seed)
    start = build_net(cfg.student, "student").state_dict()
    trained = load_state_dict_file(out / "student.ckpt")
    assert set(trained) == set(start)
    assert all(torch.equal(trained[k], v) for k, v in start.items() if "lora_" not in k)
    assert any(not torch.equal(trained[k], v) for k, v in start.items() if "lora_B" in k)
    adapter = json.loads((out / "student_hf" / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert summary["export"]["student_hf_merged"] == str(out / "student_hf_merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(out / "student_hf_merged")
    assert not any("lora_" in k for k in merged.state_dict())
    # kd-export reads the student back from student.ckpt and writes the adapter, or the merged model; each is
    # loaded back (the adapter onto the base with peft) and its logits checked against the checkpoint's.
    from kd_lightning.app.errors import ConfigError
    from kd_lightning.app.export import export

    def export_hf(*overrides):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return export(compose("export", overrides=[f"ckpt_path={out / 'student.ckpt'}", "format=hf", *overrides]))

    adapter_export = export_hf()
    assert adapter_export["path"] == str(out / "student_hf_export") and adapter_export["max_abs_error"] < 1e-4
    assert json.loads((out / "student_hf_export" / "adapter_config.json").read_text())["r"] == 2
    with pytest.raises(ConfigError, match="student_hf_merged' already exists"):  # kd-train wrote it: never overwritten
        export_hf("merged=true")
    merged_export = export_hf("merged=true", f"output={tmp_path / 'merged'}")
    assert merged_export["max_abs_error"] < 1e-4
    merged_dir = tmp_path / "merged"
    assert (merged_dir / "config.json").is_file() and not (merged_dir / "adapter_config.json").exists()


def test_missing_peft_and_a_lora_teacher_are_one_line_before_training(tmp_path, monkeypatch):
    import importlib.util

    from kd_lightning.app.checks import check_train_config
    from kd_lightning.app.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^teacher.lora is set, but LoRA adapters are for the student"):
        check_train_config(_lora_cfg(tmp_path, "+teacher.lora.r=4"))
    with pytest.raises(ConfigError, match=r"^student.lora adds LoRA adapters to a causal language model, but "
                                          r"task=classification; use it with an LM recipe"):
        check_train_config(_lora_cfg(tmp_path, "task=classification"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^student.lora is set: LoRA students need the peft package, which is not "
                                          r"installed; install it with pip install 'kd-lightning\[peft\]'$"):
        check_train_config(_lora_cfg(tmp_path))
