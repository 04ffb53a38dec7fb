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


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_side_by_side_and_trains_the_teacher_once(tmp_path):
    proc = cli("kd-train", "-m", "distill.temperature=1,4", *FAST, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The default sweep directory (time and run id, both fixed by the parent process): one for both workers.
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    launcher = OmegaConf.load(sweep / "0" / ".hydra" / "hydra.yaml").hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == 2
    status = {j: json.loads((sweep / j / "job_status.json").read_text()) for j in ("0", "1")}
    claims = {j: json.loads((sweep / j / ".kd_run.json").read_text()) for j in ("0", "1")}
    assert all(s["status"] == "ok" for s in status.values())
    # Two worker processes, each in its own job directory, whose runs overlapped in time.
    assert claims["0"]["pid"] != claims["1"]["pid"]
    assert claims["0"]["started"] < status["1"]["finished"] and claims["1"]["started"] < status["0"]["finished"]
    # The store's lock let one job train the teacher; the other read it from the cache.
    sources = sorted(json.loads((sweep / j / "summary.json").read_text())["teacher"]["source"] for j in ("0", "1"))
    assert sources == ["store", "trained"]
    assert len((sweep / "sweep_summary.csv").read_text().strip().splitlines()) == 3


@pytest.mark.slow
def test_joblib_language_model_sweep_trains_its_teacher_once(tmp_path):
    pytest.importorskip("transformers")
    from .test_lm_pipeline import TINY, TINY_TEACHER

    proc = cli("kd-train", "-m", *TINY, *TINY_TEACHER, "distill.divergence=forward,reverse", "baseline.enabled=false",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=sweep", cwd=tmp_path,
               env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    pids = {json.loads((sweep / j / ".kd_run.json").read_text())["pid"] for j in ("0", "1")}
    assert len(pids) == 2
    sources = sorted(json.loads((sweep / j / "summary.json").read_text())["teacher"]["source"] for j in ("0", "1"))
    assert sources == ["store", "trained"]
