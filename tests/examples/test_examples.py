"""The scripts in examples/ run end to end (in their --fast mode) and do what they claim.

Each example prints a human-readable summary and, as its last line, one JSON object; the tests run the
script in a subprocess and check that object. A static test also checks that the examples import only
kd-lightning's public API.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SCRIPTS = ["drop_in_lightning.py", "feature_distillation_torchvision.py", "teacher_ensemble.py", "distill_causal_lm.py",
           "distill_cross_tokenizer.py"]
# Public import paths the examples may use (the package root and its documented subpackages).
PUBLIC_MODULES = {"kd_lightning", "kd_lightning.losses", "kd_lightning.losses.functional", "kd_lightning.data",
                  "kd_lightning.models", "kd_lightning.augment", "kd_lightning.lm", "kd_lightning.data.text",
                  "kd_lightning.models.lm"}


def run_example(name: str, *args: str, timeout: int = 300) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("KD_EXAMPLES_FAST", None)
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--fast", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{name} printed nothing"
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        pytest.fail(f"{name}: the last line of its output is not JSON: {lines[-1]!r}")


def assert_teacher_guarantees(r: dict) -> None:
    """The teacher guarantees, observed from outside the module by an example."""
    assert r["teacher_frozen"] is True
    assert r["teacher_eval"] is True
    assert r["teacher_unchanged"] is True
    assert r["teacher_in_optimizer"] is False
    assert r["teacher_keys_in_ckpt"] == 0


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_uses_public_imports_and_has_fast_flag(name):
    source = (EXAMPLES / name).read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kd_lightning"):
            assert node.module in PUBLIC_MODULES, f"{name} imports from the non-public module {node.module}"
            for alias in node.names:
                assert not alias.name.startswith("_"), f"{name} imports the private name {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kd_lightning"):
                    assert alias.name in PUBLIC_MODULES, f"{name} imports the non-public module {alias.name}"
    assert '"--fast"' in source and "KD_EXAMPLES_FAST" in source
    # Offline only: nothing that downloads.
    assert "download=True" not in source
    if "torchvision" in source:
        assert "weights=None" in source


@pytest.mark.slow
def test_drop_in_lightning():
    r = run_example("drop_in_lightning.py")
    # Ten classes: chance is 0.1. The teacher must have learned, and the distilled student too.
    assert r["teacher_acc"] > 0.8
    assert r["student_acc"] > 0.5
    assert r["baseline_acc"] > 0.5
    assert r["student_params"] < r["teacher_params"] / 10
    assert_teacher_guarantees(r)
    assert r["reload_matches"] is True


@pytest.mark.slow
def test_feature_distillation_torchvision():
    pytest.importorskip("torchvision")
    r = run_example("feature_distillation_torchvision.py")
    # AT and FitNet read layer2/layer3 of unmodified torchvision models and produce finite, non-zero terms.
    assert r["all_terms_finite"] is True
    assert r["train_at"] > 0 and r["train_fitnet"] > 0 and r["train_kd"] > 0
    # The FitNet regressor was built from the feature shapes and is trained with the student ...
    assert r["adapter_params"] > 0
    assert r["adapters_in_optimizer"] is True
    assert r["student_changed"] is True
    # ... while the teacher is frozen, out of the optimizer, and its BatchNorm statistics do not move.
    assert r["teacher_requires_grad"] is False
    assert r["teacher_in_optimizer"] is False
    assert r["teacher_bn_unchanged"] is True
    assert r["student_params"] < r["teacher_params"]


@pytest.mark.slow
def test_teacher_ensemble():
    r = run_example("teacher_ensemble.py")
    assert r["num_teachers"] == 2
    assert all(acc > 0.8 for acc in r["teacher_accs"])
    # The ensemble is at least about as good as its weaker member, and the student learns from it.
    assert r["ensemble_acc"] >= min(r["teacher_accs"]) - 0.03
    assert r["student_acc"] > 0.5
    assert r["agreement"] > 0.5
    assert r["train_kd"] > 0
    assert r["teachers_frozen"] is True
    assert r["teachers_eval"] is True
    assert r["teachers_in_optimizer"] is False


@pytest.mark.slow
def test_distill_causal_lm():
    r = run_example("distill_causal_lm.py")
    # The batch format the example documents: dicts of [batch, seq_len] token tensors.
    assert r["batch_keys"] == ["attention_mask", "input_ids", "labels"]
    assert r["batch_shape"] == [16, 64]
    # An untrained model is about as perplexed as the vocabulary is large; every trained one far less.
    assert r["untrained_ppl"] > 0.6 * r["vocab_size"]
    for name in ("teacher_ppl", "baseline_ppl", "student_ppl"):
        assert r[name] < r["untrained_ppl"] / 3, (name, r[name], r["untrained_ppl"])
    assert r["agreement"] > 0.2
    assert r["student_params"] < r["teacher_params"] / 5
    assert_teacher_guarantees(r)


@pytest.mark.slow
def test_distill_cross_tokenizer():
    r = run_example("distill_cross_tokenizer.py")
    # Both tokenizations of each text, and their alignment, in every batch.
    assert {"input_ids", "teacher_input_ids", "student_span", "teacher_span", "student_edge", "teacher_edge",
            "bytes"} <= set(r["batch_keys"])
    assert r["teacher_vocab"] != r["student_vocab"]
    # Bits per byte of text: a uniform guess over 256 byte values is 8; every trained model is well below it.
    for name in ("teacher_bpb", "baseline_bpb", "student_bpb"):
        assert 0 < r[name] < 7, (name, r[name])
    assert {"ce", "span", "next", "kl", "uld"} <= set(r["train_terms"])
    assert r["teacher_unchanged"] is True and r["teacher_frozen"] is True
