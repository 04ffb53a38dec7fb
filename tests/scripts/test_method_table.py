"""scripts/method_table.py: which methods apply, the table's arithmetic, and one tiny run of the whole command
(two methods and the labels-only row, one seed, a few steps) through its one `kd-train -m` multirun."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "method_table.py"


@pytest.fixture(scope="module")
def mt():
    spec = importlib.util.spec_from_file_location("method_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_classifier_losses_apply(mt):
    from kd_lightning.losses import KD, SKD, TokenKD

    assert mt.applies_to_classifiers(KD()) and mt.applies_to_classifiers(SKD())
    assert not mt.applies_to_classifiers(TokenKD())

    class Declared:
        family = "causal_lm"

    assert not mt.applies_to_classifiers(Declared())

    class DeclaresFamilies:
        families = ("causal_lm",)

    class Both:
        families = ("classifier", "causal_lm")

    assert not mt.applies_to_classifiers(DeclaresFamilies()) and mt.applies_to_classifiers(Both())


def row(method, seed, acc, step_s=0.01, peak=10.0, params=0):
    return {"method": method, "seed": seed, "acc": acc, "teacher_acc": 0.9, "step_s": step_s, "peak_mib": peak,
            "loss_params": params}


def test_table_arithmetic_by_hand(mt):
    rows = [row("labels_only", 1, 0.60), row("labels_only", 2, 0.64),
            row("kd", 1, 0.70, step_s=0.02, peak=20.0), row("kd", 2, 0.74, step_s=0.04, peak=40.0),
            row("fitnet", 1, 0.80, step_s=0.06, peak=90.0, params=500), row("fitnet", 2, 0.84, step_s=0.06, peak=90.0,
                                                                              params=500),
            {"method": "crd", "seed": 1, "error": "boom"}]
    table = mt.aggregate(rows)
    assert [r["method"] for r in table] == ["fitnet", "kd", "labels_only", "failed jobs"]
    fit = table[0]
    assert fit["acc_mean"] == pytest.approx(0.82) and fit["acc_std"] == pytest.approx(0.0282843, rel=1e-5)
    assert fit["gain_vs_labels_only"] == pytest.approx(0.20) and fit["gap_to_teacher"] == pytest.approx(0.08)
    # KD's medians are 0.03 s and 30 MiB
    assert fit["time_vs_kd"] == pytest.approx(2.0) and fit["memory_vs_kd"] == pytest.approx(3.0)
    assert fit["added_params"] == 500 and table[1]["time_vs_kd"] == pytest.approx(1.0)
    assert table[-1]["failed"] == ["crd (seed 1)"]
    md = mt.markdown(table, 0.9, "python scripts/method_table.py --seeds 1 2")
    assert "| 1 | fitnet | 82.0 ± 2.8 | +20.0 | 8.0 | 60.0 ms | 2.00× | 3.00× | 500 |" in md
    assert "Failed jobs: crd (seed 1)" in md and "--seeds 1 2" in md


def test_protocol_is_mnist1d_by_default_and_the_published_recipe_on_request(mt):
    default = mt.protocol(None, None)
    assert "data=mnist1d" in default and "data.seed=0" in default
    assert mt.protocol("resnet32x4_resnet8x4", "cifar100") == ["pair=resnet32x4_resnet8x4", "recipe=cifar100"]
    assert "teacher_fit.seed=0" in mt.COMMON and "baseline.enabled=false" in mt.COMMON


@pytest.mark.slow
def test_tiny_table_end_to_end(mt, tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "table"
    table = mt.main(["--methods", "kd", "skd", "--seeds", "1", "--out", str(out), "--",
                     "trainer.max_epochs=1", "teacher_fit.max_epochs=1", "++trainer.limit_train_batches=8",
                     "++trainer.limit_val_batches=1"])
    assert {r["method"] for r in table} == {"labels_only", "kd", "skd"}
    saved = json.loads((out / "method_table.json").read_text())
    assert len(saved["jobs"]) == 3 and all(j["steps_timed"] == 3 for j in saved["jobs"])  # 8 steps, 5 warm-up
    assert len({j["teacher_acc"] for j in saved["jobs"]}) == 1
    assert len(list((tmp_path / "cache" / "teachers").iterdir())) == 1  # one teacher, trained once, shared
    md = (out / "method_table.md").read_text()
    assert "| labels_only |" in md and "| skd |" in md and (out / "method_table.png").stat().st_size > 0
