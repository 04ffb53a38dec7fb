"""kd_lightning/app/trackers.py: logger=wandb (offline) and logger=mlflow (local SQLite store) run for real: one
run per job with the composed config, stage-prefixed metrics, the summary's numbers and summary.png."""
from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from kd_lightning.app.confdir import CONFIG_DIR
from kd_lightning.app.pipeline import run

from .helpers import FAST

SHORT = [*FAST, "trainer.log_every_n_steps=1", "trainer.max_epochs=1", "teacher_fit.max_epochs=1",
         "baseline.enabled=false"]


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*SHORT, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.paths.log_dir = str(tmp_path / "logs")
    return cfg


@pytest.mark.slow
def test_mlflow_run_holds_config_stage_metrics_summary_and_figure(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    from kd_lightning.app.trackers import JobTrackers, config_params

    cfg = _cfg(tmp_path, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "distill.temperature=3")
    summary = run(cfg)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("kd-lightning-train")
    (found,) = client.search_runs([experiment.experiment_id])  # one run for the whole job
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    params, metrics = found.data.params, found.data.metrics
    assert params["distill/temperature"] == "3" and params["student/net/model_name"] == "cnn1d_16"
    assert metrics["student/acc"] == pytest.approx(summary["student"]["acc"])
    assert metrics["teacher/acc"] == pytest.approx(summary["teacher"]["acc"])
    history = client.get_metric_history(found.info.run_id, "student/val/acc")
    assert len(history) >= 1 and "teacher/train/loss" in metrics and "val/acc" not in metrics
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"summary.png", "summary.json", "summary.md"} <= artifacts
    assert str(tmp_path / "logs" / "mlflow" / "artifacts") in found.info.artifact_uri
    lists = {k: v for k, v in config_params(cfg).items() if isinstance(v, list) and v}
    assert lists and all(params[k] == str(v) for k, v in lists.items())  # lists are parameters too
    assert params["callbacks/model_checkpoint/monitor"] == "val/acc"
    # A job that raises closes its run as failed.
    trackers = JobTrackers(_cfg(tmp_path / "failing", "logger=mlflow", f"logger.mlflow.tracking_uri={uri}"))
    run_id = trackers.job_logger("mlflow").run_id
    trackers.close_failed()
    assert client.get_run(run_id).info.status == "FAILED"


@pytest.mark.slow
def test_wandb_offline_run_directory_holds_one_run_with_config_metrics_and_figure(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = run(_cfg(tmp_path, "logger=wandb", "logger.wandb.offline=true", "distill.temperature=3"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # one run for the whole job, in the job's directory
    (record,) = runs[0].glob("run-*.wandb")
    data = record.read_bytes()
    for key in (b"student/val/acc", b"teacher/train/loss", b"student/acc", b"distill/temperature"):
        assert key in data, key
    assert json.dumps(summary["student"]["acc"]).encode() in data  # the summary's number itself
    assert list((runs[0] / "files" / "media" / "images" / "figures").glob("summary_*.png"))  # summary.png


def test_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import importlib.util

    from kd_lightning.app.checks import check_train_config
    from kd_lightning.app.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^logger=mlflow \(mlflow\) needs the mlflow package, which is not "
                                          r"installed; install it with pip install 'kd-lightning\[mlflow\]'"):
        check_train_config(_cfg(tmp_path, "logger=mlflow"))
