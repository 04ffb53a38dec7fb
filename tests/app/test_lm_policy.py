"""On-policy distillation, sequence-level KD and the teacher's perplexity of each model's own samples in
kd-train (experiment=lm_pydoc_pairs): the config, the one-line errors, tiny runs, a hand computation."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from kd_lightning.app.confdir import CONFIG_DIR  # noqa: E402
from kd_lightning.app.errors import ConfigError  # noqa: E402
from kd_lightning.app.tasks.causal_lm import teacher_ppl_of_samples  # noqa: E402
from kd_lightning.app.pipeline import run  # noqa: E402
from kd_lightning.lm.generation import Sampling  # noqa: E402

# Tiny models, a 300-token BPE, 8-token prompts and responses, a few steps per stage.
TINY = ["experiment=lm_pydoc_pairs", "teacher_fit.max_steps=4", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
        "data.vocab_size=300", "data.prompt_tokens=8", "data.response_tokens=8", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=2", "samples.max_new_tokens=4", "trainer.log_every_n_steps=1",
        "teacher_ppl_of_samples.max_prompts=20",
        "student.net.hidden_size=16", "student.net.num_layers=1", "student.net.intermediate_size=32",
        "teacher.net.hidden_size=32", "teacher.net.num_layers=1", "teacher.net.intermediate_size=64"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("policy_cache")  # the tokenizer and the teacher are shared by the runs here


def make_cfg(tmp_path: Path, cache: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(cache)
    return cfg


def test_experiment_composes_with_pairs_and_response_positions():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=lm_pydoc_pairs"])
    assert cfg.task == "causal_lm" and cfg.data._target_.endswith("PydocPairsDataModule")
    assert cfg.distill.kd_positions == "labels" and cfg.distill.on_policy.lam is None
    assert cfg.distill.sequence_kd is False and cfg.teacher_ppl_of_samples.enabled is True
    assert cfg.distill.sampling.max_new_tokens == cfg.data.response_tokens == 32
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        plain = compose("train", overrides=["experiment=lm_pydoc"])
    # The packed-text default keeps its settings: no on-policy, no sequence KD, no extra metric.
    assert plain.distill.on_policy.lam is None and plain.distill.kd_positions == "all"
    assert plain.get("teacher_ppl_of_samples") is None


# Each key is a row of the README's "Bad input" table (tests/test_readme.py checks the two agree):
# (overrides after TINY, which sets experiment=lm_pydoc_pairs; what the one-line error must say).
POLICY_BAD = {
    "experiment=lm_pydoc_pairs distill.on_policy.lam=1.5": (
        ["distill.on_policy.lam=1.5"], "distill.on_policy.lam=1.5 must be in [0, 1]"),
    "experiment=lm_pydoc_pairs distill.on_policy.lam=-0.1": (
        ["distill.on_policy.lam=-0.1"], "distill.on_policy.lam=-0.1 must be in [0, 1]"),
    "experiment=lm_pydoc_pairs distill.on_policy.lam=0.5 distill.kd_positions=all": (
        ["distill.on_policy.lam=0.5", "distill.kd_positions=all"], "needs distill.kd_positions=labels (got 'all')"),
    "experiment=lm_pydoc_pairs distill.on_policy.lam=0.5 distill.sampling.max_new_tokens=0": (
        ["distill.on_policy.lam=0.5", "distill.sampling.max_new_tokens=0"],
        "distill.sampling.max_new_tokens=0 must be a positive integer"),
    "experiment=lm_pydoc_pairs distill.sequence_kd=true distill.sampling.temperature=0": (
        ["distill.sequence_kd=true", "distill.sampling.temperature=0"], "distill.sampling.temperature=0 must be"),
    "experiment=lm_pydoc_pairs distill.on_policy.lam=1 distill.sampling.top_k=0": (
        ["distill.on_policy.lam=1", "distill.sampling.top_k=0"], "distill.sampling.top_k=0 must be a positive integer"),
    "experiment=lm_pydoc_pairs distill.on_policy.lam=1 distill.teacher_outputs=true": (
        ["distill.on_policy.lam=1", "distill.teacher_outputs=true"], "set distill.teacher_outputs=false"),
    "experiment=lm_pydoc_pairs task=classification distill.on_policy.lam=1": (
        ["task=classification", "distill.on_policy.lam=1"], "needs a language model"),
}


@pytest.mark.parametrize("case", sorted(POLICY_BAD))
def test_bad_values_are_one_line_before_training(tmp_path, cache_dir, case):
    overrides, message = POLICY_BAD[case]
    with pytest.raises(ConfigError) as info:
        run(make_cfg(tmp_path, cache_dir, *overrides))
    text = str(info.value)
    assert message in text and "\n" not in text, text
    assert not (tmp_path / "run" / "teacher").exists()


def student_metrics(run_dir: Path) -> list:
    path = run_dir / "csv" / "student" / "metrics.csv"
    with open(path) as f:
        return list(csv.DictReader(f))


def test_on_policy_run_samples_and_reports_teacher_ppl_of_samples(tmp_path, cache_dir):
    summary = run(make_cfg(tmp_path, cache_dir, "distill.on_policy.lam=1"))
    for stage in ("teacher", "baseline", "student"):
        value = summary[stage]["teacher_ppl_of_samples"]
        assert math.isfinite(value) and value > 1, stage
        assert summary[stage]["ppl"] > 1, stage
    # Every student step was on-policy (lam=1); the log says so.
    drawn = [float(r["train/on_policy"]) for r in student_metrics(tmp_path / "run") if r.get("train/on_policy")]
    assert drawn == [1.0]
    assert summary["data"] == "PydocPairsDataModule"
    # The same run with lam=0 (supervised KD): no step samples; the metric is computed all the same.
    supervised = run(make_cfg(tmp_path / "sup", cache_dir, "distill.on_policy.lam=0", "baseline.enabled=false"))
    drawn = [float(r["train/on_policy"]) for r in student_metrics(tmp_path / "sup" / "run") if r.get("train/on_policy")]
    assert drawn == [0.0] and supervised["teacher"]["source"] == "store"
    # The teacher's own samples do not depend on how the student was trained: same seed, same value.
    assert supervised["teacher"]["teacher_ppl_of_samples"] == pytest.approx(summary["teacher"]["teacher_ppl_of_samples"])


def test_sequence_kd_run_trains_on_cached_teacher_completions(tmp_path, cache_dir):
    summary = run(make_cfg(tmp_path, cache_dir, "distill.sequence_kd=true", "distill.ce_weight=1",
                           "distill.kd_weight=0", "baseline.enabled=false"))
    (path,) = list((cache_dir / "seqkd").glob("seqkd-*/completions.pt"))
    completions = torch.load(path, weights_only=True)
    ids, labels = completions["input_ids"], completions["labels"]
    # One completion per training pair: the 8 prompt tokens (label -100), then 8 sampled tokens.
    assert ids.shape[1] == 16 and (labels[:, :8] == -100).all()
    assert ((labels[:, 8:] != -100) | (completions["attention_mask"][:, 8:] == 0)).all()
    assert ids.shape[0] > 100 and summary["student"]["ppl"] > 1
    assert summary["student"]["teacher_ppl_of_samples"] > 1


# ------------------------------------------------------------------------------------- hand computation
class Constant(nn.Module):
    """Always predicts ``token`` (a logit 60 above the rest): sampling returns it every time."""

    def __init__(self, vocab: int, token: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(vocab))
        with torch.no_grad():
            self.logits[token] = 60.0

    def forward(self, input_ids):
        return self.logits.expand(*input_ids.shape, -1)


class Bigram(nn.Module):
    """Next-token logits from the current token only: ``table[token]``."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.table.weight.copy_(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids):
        return self.table(input_ids)


class Prompts(L.LightningDataModule):
    """Three held-out rows: 2 prompt tokens (label -100) and a 2-token response."""

    def __init__(self):
        super().__init__()
        ids = torch.tensor([[1, 4, 6, 7], [2, 5, 6, 7], [0, 8, 6, 7]])
        labels = ids.clone()
        labels[:, :2] = -100
        self.rows = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y} for i, y in zip(ids, labels)]

    def test_dataloader(self):
        return DataLoader(self.rows, batch_size=2)


def test_teacher_ppl_of_samples_matches_a_hand_computation():
    vocab, token = 10, 3
    student, teacher, data = Constant(vocab, token), Bigram(vocab), Prompts()
    logp = torch.log_softmax(teacher.table.weight.detach().double(), dim=-1)  # logp[a, b] = log p(b | a)
    last = [4, 5, 8]  # each prompt's last token
    state = torch.random.get_rng_state()

    # Three sampled tokens, all `token`: p(3 | last prompt token), then p(3 | 3) twice, per row.
    value = teacher_ppl_of_samples(student, teacher, data, Sampling(max_new_tokens=3, prompt_tokens=2), seed=7)
    nll = sum(-logp[a, token] - 2 * logp[token, token] for a in last)
    assert value == pytest.approx(math.exp(float(nll) / 9), rel=1e-6)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched

    # The sampled token is the end-of-sequence token: only it is scored, what follows is not.
    value = teacher_ppl_of_samples(student, teacher, data, Sampling(max_new_tokens=3, prompt_tokens=2,
                                                                    eos_token_id=token))
    assert value == pytest.approx(math.exp(float(sum(-logp[a, token] for a in last)) / 3), rel=1e-6)

    # max_prompts: the first two held-out prompts only.
    value = teacher_ppl_of_samples(student, teacher, data, Sampling(max_new_tokens=1, prompt_tokens=2), max_prompts=2)
    assert value == pytest.approx(math.exp(float(-logp[4, token] - logp[5, token]) / 2), rel=1e-6)


def test_teacher_ppl_of_samples_is_reproducible_for_a_sampling_model():
    from tests.lm.helpers import TinyLM

    student, teacher, data = TinyLM(vocab=10, seed=1), Bigram(10), Prompts()
    sampling = Sampling(max_new_tokens=4, prompt_tokens=2)
    first = teacher_ppl_of_samples(student, teacher, data, sampling, seed=3)
    assert teacher_ppl_of_samples(student, teacher, data, sampling, seed=3) == first
    assert teacher_ppl_of_samples(student, teacher, data, sampling, seed=4) != first
