"""kd-train with a student tokenizer of its own (experiment=lm_pydoc_xtok): the teacher trains on the data's
tokenizer, the baseline and the student on theirs, and the report compares them by bits per byte."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from kd_lightning.app.confdir import CONFIG_DIR
from kd_lightning.app.errors import ConfigError
from kd_lightning.app.pipeline import run
from kd_lightning.app.teacher_store import teacher_key

# lm_pydoc's tiny settings (tests/app/test_lm_pipeline.py) with a 280-token Unigram for the student.
TINY = ["teacher_fit.max_steps=4", "trainer.max_steps=3", "trainer.enable_progress_bar=false", "data.seq_len=32",
        "data.vocab_size=300", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2",
        "samples.max_new_tokens=4", "student.net.hidden_size=16", "student.net.num_layers=1",
        "student.net.intermediate_size=32", "teacher.net.hidden_size=32", "teacher.net.num_layers=1",
        "teacher.net.intermediate_size=64", "student_tokenizer.vocab_size=280"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xtok_cache")


def make_cfg(tmp_path: Path, cache: Path, *overrides: str, experiment: str = "lm_pydoc_xtok"):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        tiny = TINY if experiment == "lm_pydoc_xtok" else TINY[:-1]
        cfg = compose("train", overrides=[f"experiment={experiment}", *tiny, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(cache)
    return cfg


# Input as typed -> (the overrides after the experiment, what the one-line error must say).
XTOK_BAD = {
    "experiment=lm_pydoc distill=span_align": (
        ("lm_pydoc", ["distill=span_align"]),
        r"distill=span_align is a cross-tokenizer loss, but the teacher tokenizer is the data's tokenizer "
        r"\(PydocTextDataModule, data.vocab_size=300\) and the student tokenizer is the same one.*"
        r"student_tokenizer.kind=unigram.*or use distill=token_kd"),
    "experiment=lm_pydoc_xtok distill=token_kd": (
        ("lm_pydoc_xtok", ["distill=token_kd"]),
        r"the teacher tokenizer is the data's tokenizer .* and the student tokenizer a unigram tokenizer of "
        r"student_tokenizer.vocab_size=280, but distill=token_kd compares .* use distill=span_align or distill=uld"),
    "experiment=lm_pydoc_xtok module.fused_head=true": (
        ("lm_pydoc_xtok", ["module.fused_head=true"]), r"student_tokenizer gives the student another tokenizer than "
                                                       r"the teacher's, but module.fused_head needs one tokenizer.*"
                                                       r"set module.fused_head=false"),
    "experiment=lm_pydoc_xtok distill.span_weight=-1": (
        ("lm_pydoc_xtok", ["distill.span_weight=-1"]), r"distill.span_weight=-1: .*span_weight must be a finite "
                                                       r"number >= 0"),
    "experiment=lm_pydoc_xtok student_tokenizer.kind=wordpiece": (
        ("lm_pydoc_xtok", ["student_tokenizer.kind=wordpiece"]),
        r"student_tokenizer: tokenizer kind='wordpiece' is not known; use one of bpe, unigram"),
}


@pytest.mark.parametrize("case", sorted(XTOK_BAD))
def test_bad_cross_tokenizer_input_is_one_clear_line_before_training(tmp_path, cache_dir, case):
    (experiment, overrides), expected = XTOK_BAD[case]
    with pytest.raises(ConfigError, match=expected) as info:
        run(make_cfg(tmp_path, cache_dir, *overrides, experiment=experiment))
    assert "\n" not in str(info.value) and not (tmp_path / "run" / "teacher").exists()


def test_the_cross_tokenizer_teacher_is_lm_pydoc_s_stored_teacher(compose):
    # The teacher's data, model and training settings are lm_pydoc's: one entry of the teacher store serves
    # both, also for a seed table whose runs share lm_pydoc's teacher through teacher_fit.seed.
    plain = compose("experiment=lm_pydoc")
    cross = compose("experiment=lm_pydoc_xtok", "distill=uld", "seed=1", "teacher_fit.seed=42")
    assert teacher_key(plain) == teacher_key(cross)


@pytest.mark.slow
def test_cross_tokenizer_run_reports_bits_per_byte_of_each_role(tmp_path, cache_dir):
    summary = run(make_cfg(tmp_path, cache_dir))
    for role in ("teacher", "baseline", "student"):
        assert 0 < summary[role]["bpb"] < 20, role
    # The student and the baseline read the text with the student's tokenizer, the teacher with the data's.
    assert summary["tokenizers"]["teacher"].startswith("a BPE tokenizer of 300")
    assert summary["tokenizers"]["student"].startswith("a Unigram tokenizer of 280")
    assert summary["student"]["params"] == summary["baseline"]["params"] != summary["teacher"]["params"]
    assert summary["bpb_gain"] == pytest.approx(summary["baseline"]["bpb"] - summary["student"]["bpb"], abs=1e-4)
    assert "ppl_gain" not in summary
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["student"]["bpb"] == summary["student"]["bpb"]
    assert "bits per byte" in (tmp_path / "run" / "summary.md").read_text()
    # kd-eval re-tests the saved student with its own tokenizer (the run's figure), not the data's.
    from helpers import compose_config

    from kd_lightning.app.eval import evaluate

    result = evaluate(compose_config(tmp_path, f"ckpt_path={summary['student']['ckpt_path']}",
                                     "+trainer.limit_test_batches=2", "trainer.accelerator=cpu", name="eval", out="eval"))
    assert result["test/bpb"] == pytest.approx(summary["student"]["bpb"], rel=1e-4)
    # A second run (another method) reuses the teacher and the baseline from the store.
    again = run(make_cfg(tmp_path / "again", cache_dir, "distill=uld"))
    assert again["teacher"]["source"] == "store" and again["baseline"]["source"] == "store"
    assert again["baseline"]["bpb"] == pytest.approx(summary["baseline"]["bpb"])
