"""kd_lightning/app/sweep.py: multirun sweeps write a sweep summary and reuse the teacher; Optuna searches report
their best trial."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from .helpers import FAST, cli


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
    # the best value is the best trial's student accuracy (optimized_metric: student/acc, maximized)
    accs = [json.loads((tmp_path / "search" / j / "summary.json").read_text())["student"]["acc"] for j in ("0", "1")]
    assert float(results.best_value) == pytest.approx(max(accs))
