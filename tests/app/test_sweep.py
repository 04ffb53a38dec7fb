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


# ------------------------------------------------------------------------------ the sweep plot
def _rows(metric, students, teacher, baseline):
    leaf = metric.split("/")[1]
    return [{"job": str(i), "status": "ok", "distill.temperature": t, metric: v, f"teacher/{leaf}": teacher,
             f"baseline/{leaf}": baseline} for i, (t, v) in enumerate(students)]


def _references(ax):
    """The horizontal lines of an axes: ``label -> y``."""
    return {line.get_label(): float(line.get_ydata()[0]) for line in ax.get_lines()
            if len(set(map(float, line.get_ydata()))) == 1}


@pytest.mark.parametrize("family", ["classifier", "causal_lm"])
def test_sweep_plot_draws_teacher_and_baseline_and_an_axis_that_does_not_zoom(family):
    import matplotlib.pyplot as plt

    from kd_lightning.app.sweep import sweep_figure

    if family == "classifier":  # three students 0.3 points apart, teacher and baseline just outside them
        metric, students, teacher, baseline = "student/acc", [(1, 0.912), (2, 0.915), (4, 0.914)], 0.921, 0.910
    else:  # perplexity: lower is better
        metric, students, teacher, baseline = "student/ppl", [(1, 121.0), (2, 119.5), (4, 120.2)], 112.2, 122.0
    fig = sweep_figure(_rows(metric, students, teacher, baseline), ["distill.temperature"], metric)
    try:
        (ax,) = fig.axes
        refs = _references(ax)
        assert {label.split(" ")[0] for label in refs} == {"teacher", "labels-only"}
        assert refs[next(k for k in refs if k.startswith("teacher"))] == pytest.approx(teacher)
        assert refs[next(k for k in refs if k.startswith("labels-only"))] == pytest.approx(baseline)
        bottom, top = ax.get_ylim()
        values = [v for _, v in students] + [teacher, baseline]
        assert bottom <= min(values) and max(values) <= top
        if family == "classifier":
            assert top - bottom >= 0.10 and 0.0 <= bottom and top <= 1.0  # ten points at least, inside [0, 1]
            assert "higher is better" in ax.get_ylabel()
        else:
            assert top - bottom >= 0.2 * max(values) and bottom >= 0
            assert "lower is better" in ax.get_ylabel()
        # the students are the scatter, at their own values
        (points,) = ax.collections
        assert sorted(points.get_offsets()[:, 1].tolist()) == pytest.approx(sorted(v for _, v in students))
    finally:
        plt.close(fig)


def test_sweep_plot_limits_stay_inside_zero_and_one_and_without_references_draw_no_lines():
    import matplotlib.pyplot as plt

    from kd_lightning.app.sweep import honest_limits, sweep_figure

    bottom, top = honest_limits([0.995, 0.999], "student/acc")
    assert top == 1.0 and top - bottom >= 0.10 - 1e-12
    bottom, top = honest_limits([0.001, 0.004], "student/acc")
    assert bottom == 0.0 and top >= 0.10
    bottom, top = honest_limits([-0.02, 0.01], "kd_gain")  # a difference of accuracies may go below 0
    assert bottom < -0.02 and top - bottom >= 0.10
    rows = [{"job": "0", "status": "ok", "speedup": 2.5}, {"job": "1", "status": "ok", "speedup": 2.6}]
    fig = sweep_figure(rows, [], "speedup")
    try:
        assert _references(fig.axes[0]) == {}
    finally:
        plt.close(fig)
