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
    assert sources == ["trained", "store"]


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


def test_only_overridden_keys_are_swept_parameters_and_derived_metrics_stay_results(tmp_path):
    import json

    from kd_lightning.app.sweep import write_sweep_summary

    for job, (t, speedup, gain) in enumerate([(1, 2.79, 0.03), (4, 1.04, 0.05)]):
        d = tmp_path / str(job)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- distill.temperature={t}\n- trainer.max_epochs=5\n")
        (d / "summary.json").write_text(json.dumps({"student": {"acc": 0.9 + job / 100}, "speedup": speedup,
                                                    "acc_retained": 0.95 + job / 100, "kd_gain": gain}))
    rows = write_sweep_summary(tmp_path, "student/acc")
    header = (tmp_path / "sweep_summary.md").read_text().splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["job", "status", "distill.temperature", "student/acc"]
    assert [r["speedup"] for r in rows] == [2.79, 1.04]  # still recorded in the CSV, as results
