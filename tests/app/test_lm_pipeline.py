"""kd-train for language models (task=causal_lm, experiment=lm_pydoc): the stages, the report, the Hugging
Face export, the sweep over divergences and the one-line errors on bad input. Tiny models, few steps."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from kd_lightning.app.confdir import CONFIG_DIR  # noqa: E402
from kd_lightning.app.errors import ConfigError  # noqa: E402
from kd_lightning.app.pipeline import run  # noqa: E402

# A ~20k-parameter teacher and a ~7k student, a 300-token BPE, 32-token sequences, a few steps per stage.
TINY = ["experiment=lm_pydoc", "teacher_fit.max_steps=6", "trainer.max_steps=4", "trainer.enable_progress_bar=false",
        "data.seq_len=32", "data.vocab_size=300", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2",
        "samples.max_new_tokens=4", "+trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "student.net.hidden_size=16", "student.net.num_layers=1", "student.net.intermediate_size=32"]
TINY_TEACHER = ["teacher.net.hidden_size=32", "teacher.net.num_layers=1", "teacher.net.intermediate_size=64"]
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog, {i % 7} times.\n" for i in range(200))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lm_cache")  # the tokenizers and teachers are shared by the tests here


def make_cfg(tmp_path: Path, cache: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        teacher = [] if any(o.startswith("teacher=") for o in overrides) else TINY_TEACHER
        cfg = compose("train", overrides=[*TINY, *teacher, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(cache)
    return cfg


def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def test_lm_run_has_three_stages_report_and_hf_student(tmp_path, cache_dir):
    summary = run(make_cfg(tmp_path, cache_dir))
    out = tmp_path / "run"
    assert summary["task"] == "causal_lm" and summary["teacher"]["source"] == "trained"
    for stage in ("teacher", "baseline", "student"):
        s = summary[stage]
        assert s["ppl"] > 1 and 0 < s["bpb"] < 20 and s["params"] > 0 and s["tokens_per_s"] > 0, stage
        assert len(s["samples"]) == len(summary["prompts"]) == 3, stage
        assert s["val_curve"], stage  # validation every 2 steps
    assert summary["teacher"]["params"] > 2 * summary["student"]["params"]
    assert 0 < summary["student"]["agreement"] <= 1
    assert {"gap_closed", "ppl_gain", "compression", "speedup"} <= set(summary)
    assert summary["distill"] == {"name": "token_kd", "temperature": 1.0, "divergence": "forward"}
    assert json.loads((out / "summary.json").read_text())["student"]["ppl"] == summary["student"]["ppl"]
    md = (out / "summary.md").read_text()
    assert "| model | perplexity | bits/byte |" in md and "## Sampled continuations" in md
    assert (out / "summary.png").stat().st_size > 0 and (out / "student.ckpt").is_file()
    assert summary["export"]["student_hf"] == str(out / "student_hf")

    from transformers import AutoModelForCausalLM, pipeline

    model = AutoModelForCausalLM.from_pretrained(out / "student_hf")
    assert sum(p.numel() for p in model.parameters()) == summary["student"]["params"]
    generate = pipeline("text-generation", model=str(out / "student_hf"), device="cpu")
    text = generate("The for statement", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    assert text.startswith("The for statement")

    # The same run again: the teacher comes from the cache (its digest checked), the numbers are the same.
    again = run(make_cfg(tmp_path / "again", cache_dir, "baseline.enabled=false"))
    assert again["teacher"]["source"] == "store" and again["teacher"]["ppl"] == pytest.approx(summary["teacher"]["ppl"])
    # A given teacher: the exported student as a local Hugging Face directory, with its own tokenizer.
    hf = out / "student_hf"
    given = run(make_cfg(tmp_path / "given", cache_dir, "teacher=hf_local", f"teacher.name_or_path={hf}",
                         f"data.tokenizer={hf}", "baseline.enabled=false"))
    assert given["teacher"]["source"] == "pretrained"
    assert given["teacher"]["ppl"] == pytest.approx(summary["student"]["ppl"], rel=1e-4)


def _no_pad_tokenizer(tmp: Path) -> str:
    from kd_lightning.data.text import train_bpe_tokenizer

    tok = train_bpe_tokenizer([TEXT], vocab_size=300)
    tok.pad_token = None
    tok.save_pretrained(tmp / "no_pad")
    return str(tmp / "no_pad")


def _pairs_without_prompt(tmp: Path) -> str:
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(4)))
    return str(pairs)


# Each key is a row of the README's "Bad input" table (tests/test_readme.py checks the two agree); <...> marks
# a file the test writes: (overrides, what the one-line error must say).
LM_BAD = {
    "experiment=lm_pydoc data=lm_text data.path=<missing file>": (
        lambda tmp: ["data=lm_text", f"data.path={tmp / 'missing.txt'}"], r"^data.path='.*missing.txt': .*missing.txt.*does not exist"),
    "experiment=lm_pydoc data=lm_jsonl data.path=<rows without a prompt field>": (
        lambda tmp: ["data=lm_jsonl", f"data.path={_pairs_without_prompt(tmp)}"], r"line 1 has no field 'prompt'"),
    "experiment=lm_pydoc data.seq_len=64 student.net.max_position_embeddings=32": (
        lambda tmp: ["data.seq_len=64", "student.net.max_position_embeddings=32"],
        r"data.seq_len=64 is longer than the student's context of 32 positions"),
    "experiment=lm_pydoc data.tokenizer=<a tokenizer without a pad token>": (
        lambda tmp: [f"data.tokenizer={_no_pad_tokenizer(tmp)}"],
        r"has no pad token"),
    "experiment=lm_pydoc teacher=hf_local teacher.name_or_path=some-org/not-on-disk": (
        lambda tmp: ["teacher=hf_local", "teacher.name_or_path=some-org/not-on-disk"],
        r"'some-org/not-on-disk' is not on this machine.*local directory"),
    "experiment=lm_pydoc data.seq_len=1": (lambda tmp: ["data.seq_len=1"],
                                          r"^data.seq_len=1: .*seq_len=1 is too short: a sequence needs >= 2 tokens"),
    "experiment=lm_pydoc data.vocab_size=10": (lambda tmp: ["data.vocab_size=10"],
                                               r"the tokenizer has \d+ tokens but the student's vocabulary has 10"),
    "experiment=lm_pydoc distill.divergence=kl": (lambda tmp: ["distill.divergence=kl"],
                                                  r"^distill.divergence='kl': .*divergence='kl' is not known"),
    "experiment=lm_pydoc distill.divergence=jsd distill.beta=2": (
        lambda tmp: ["distill.divergence=jsd", "distill.beta=2"], r"^distill.beta=2: .*TokenKD: beta=2 is outside \[0, 1\]"),
    "experiment=lm_pydoc distill.divergence=skew_forward distill.alpha=2": (
        lambda tmp: ["distill.divergence=skew_forward", "distill.alpha=2"], r"^distill.alpha=2: .*TokenKD: alpha=2 is outside \[0, 1\]"),
    "experiment=lm_pydoc distill.kd_positions=nope": (lambda tmp: ["distill.kd_positions=nope"],
                                                      r"^distill.kd_positions='nope': .*kd_positions='nope' is not known; use 'all'.*or 'labels'"),
    "experiment=lm_pydoc distill.temperature=0": (lambda tmp: ["distill.temperature=0"],
                                                  r"temperature must be a positive finite number, got 0"),
    "experiment=lm_pydoc distill=kd": (lambda tmp: ["distill=kd"], r"distill=kd is a classifier method.*distill=token_kd"),
    "experiment=lm_pydoc task=classification": (lambda tmp: ["task=classification"],
                                                r"distill=token_kd distills language models.*experiment=lm_pydoc"),
    "experiment=lm_pydoc samples.max_new_tokens=0": (lambda tmp: ["samples.max_new_tokens=0"],
                                                     r"samples.max_new_tokens=0 must be a positive number of tokens"),
    "experiment=lm_pydoc samples.temperature=-1": (lambda tmp: ["samples.temperature=-1"],
                                                   r"samples.temperature=-1 must be a positive number"),
    "experiment=lm_pydoc samples.top_k=-2": (lambda tmp: ["samples.top_k=-2"],
                                             r"samples.top_k=-2 must be an integer >= 0"),
    "experiment=lm_pydoc distill.teacher_outputs=true distill.divergence=reverse": (
        lambda tmp: ["distill.teacher_outputs=true", "distill.divergence=reverse"],
        r"serves the forward KL only.*set distill.divergence=forward or distill.teacher_outputs=false"),
    "experiment=lm_pydoc distill.teacher_outputs=true distill.teacher_outputs_top_k=5000": (
        lambda tmp: ["distill.teacher_outputs=true", "distill.teacher_outputs_top_k=5000"],
        r"teacher_outputs_top_k=5000 exceeds the teacher's vocabulary of \d+ tokens"),
}


@pytest.mark.parametrize("case", sorted(LM_BAD))
def test_bad_lm_input_is_one_clear_line_before_training(tmp_path, cache_dir, case):
    overrides, expected = LM_BAD[case]
    with pytest.raises(ConfigError, match=expected) as info:
        run(make_cfg(tmp_path, cache_dir, *overrides(tmp_path)))
    message = str(info.value)
    assert "\n" not in message and not (tmp_path / "run" / "teacher").exists(), message


def test_student_trains_on_the_stored_top_k_signal_without_a_teacher(tmp_path, cache_dir, monkeypatch):
    from kd_lightning import CausalLMDistillationModule
    from kd_lightning.cache.tokens import TokenTeacherOutputs

    seen = []
    step = CausalLMDistillationModule.training_step

    def spy(self, batch, batch_idx):
        seen.append((self.teacher is None, "teacher_topk_ids" in batch))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(CausalLMDistillationModule, "training_step", spy)
    cached = ["distill.teacher_outputs=true", "distill.teacher_outputs_top_k=8", "baseline.enabled=false"]
    summary = run(make_cfg(tmp_path, cache_dir, *cached))
    stored = summary["student"]["teacher_outputs"]
    assert stored["top_k"] == 8 and stored["dense_fp32_bytes_per_token"] == 4 * 300
    assert 6 * 8 + 4 <= stored["bytes_per_token"] < 6 * 8 + 5  # ids int32 + log-probs fp16 + rest fp32
    student_steps = seen[-4:]  # trainer.max_steps=4 (teacher steps come first, with their own module)
    assert student_steps == [(True, True)] * 4
    assert "stored top-8 next-token distributions" in (tmp_path / "run" / "summary.md").read_text()
    # Again: the stored signal is reused (checked, not rebuilt), and the student ends the same.
    monkeypatch.setattr(TokenTeacherOutputs, "build", lambda *a, **k: pytest.fail("the cache was rebuilt"))
    again = run(make_cfg(tmp_path / "again", cache_dir, *cached))
    assert again["student"]["ppl"] == pytest.approx(summary["student"]["ppl"], rel=1e-6)


def test_prompt_response_data_masks_prompts_through_the_app(tmp_path, cache_dir):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}? ",
                                         "response": f"The answer is {2 * i}."}) + "\n" for i in range(40)))
    summary = run(make_cfg(tmp_path, cache_dir, "data=lm_jsonl", f"data.path={pairs}", "data.batch_size=8",
                           "distill.kd_positions=labels", "baseline.enabled=false", "samples.prompts=[Question 1:]"))
    assert summary["data"] == "PromptResponseDataModule" and summary["student"]["ppl"] > 1
    assert len(summary["student"]["samples"]) == 1


@pytest.mark.slow
def test_divergence_sweep_writes_the_table(tmp_path):
    env = {**os.environ, "KD_CACHE_DIR": str(tmp_path / "cache"), "KD_LOG_DIR": str(tmp_path / "outputs"),
           "OMP_NUM_THREADS": "1"}
    exe = Path(sys.executable).parent / "kd-train"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kd_lightning.app.train"]
    sweep = tmp_path / "sweep"
    proc = subprocess.run(cmd + ["-m", *TINY, *TINY_TEACHER, "distill.divergence=forward,reverse,jsd", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (sweep / "sweep_summary.md").read_text()
    assert "distill.divergence" in table and "student/ppl" in table
    assert all(d in table for d in ("forward", "reverse", "jsd")) and (sweep / "sweep_summary.png").exists()
    # A bad input on the command line: one line, no traceback.
    proc = subprocess.run(cmd + [*TINY, "data=lm_text", "data.path=/nowhere/corpus.txt"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "kd-train: error: " in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_kd_eval_and_kd_export_read_an_lm_run_s_student(tmp_path, cache_dir, capsys):
    import numpy as np
    import torch
    from helpers import compose_config
    from transformers import AutoModelForCausalLM

    from kd_lightning.app.eval import evaluate
    from kd_lightning.app.export import export

    summary = run(make_cfg(tmp_path, cache_dir, "baseline.enabled=false", "samples.prompts=[]"))
    ckpt = Path(summary["student"]["ckpt_path"])
    capsys.readouterr()
    # The run tested on two batches (TINY): so does kd-eval here.
    result = evaluate(compose_config(tmp_path, f"ckpt_path={ckpt}", "+trainer.limit_test_batches=2",
                                     "trainer.accelerator=cpu", name="eval", out="eval"))
    line = capsys.readouterr().out
    assert result["task"] == "causal_lm" and "test/acc" not in result
    # The same weights on the same held-out split: the run's own measurement.
    assert result["test/ppl"] == pytest.approx(summary["student"]["ppl"], rel=1e-4)
    assert result["test/bpb"] == pytest.approx(summary["student"]["bpb"], rel=1e-4)
    assert f"test/ppl: {result['test/ppl']:.3f}  test/bpb: {result['test/bpb']:.4f}" in line
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["test/ppl"] == result["test/ppl"]

    out = tmp_path / "exported"
    written = export(compose_config(tmp_path, f"ckpt_path={ckpt}", f"output={out}", "format=onnx", name="export",
                                    out="export"))
    assert written["path"] == str(out) and written["format"] == "hf"
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "student_hf").eval()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)
    # The Llama-style preset exports; the file runs another batch size and length than it was traced with.
    assert written["onnx"] == str(out / "model.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(written["onnx"], providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(got, reference(ids).logits.numpy(), atol=1e-4)
