"""SIGTERM in the middle of a stage: a resumable checkpoint, a non-zero exit, and resume=true continues
where the run stopped (finished stages read back and verified, the interrupted one from its checkpoint)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FAST = ["trainer.max_epochs=3", "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0"]


def cli(*args, cwd):
    exe = Path(sys.executable).parent / "kd-train"
    env = {**os.environ, "KD_CACHE_DIR": str(cwd / "cache"), "KD_LOG_DIR": str(cwd / "outputs"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sigterm_saves_the_stage_and_resume_continues_it(tmp_path):
    marker = tmp_path / "killed"
    args = [*FAST, "hydra.run.dir=run", "+callbacks.killer._target_=killer.SigtermAtStep",
            "+callbacks.killer.stage=student", "+callbacks.killer.step=6", f"+callbacks.killer.marker={marker}"]
    first = cli(*args, cwd=tmp_path)
    run = tmp_path / "run"
    assert first.returncode != 0, first.stderr[-3000:]
    assert "kd-train: interrupted by SIGTERM" in first.stderr and "resume=true" in first.stderr
    assert marker.read_text() == "6" and not (run / "summary.json").exists()
    ckpt = torch.load(run / "student" / "checkpoints" / "interrupted.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6 and ckpt["optimizer_states"] and "kd_rng" in json.dumps(list(ckpt["callbacks"]))
    status = json.loads((run / "job_status.json").read_text())
    assert status["status"] == "interrupted"
    records = {s: (run / s / "stage.json").read_text() for s in ("teacher", "baseline")}
    assert not (run / "student" / "stage.json").exists()

    second = cli(*args, "resume=true", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "stage baseline: finished earlier, read back" in log and "stage student: resuming" in log
    assert "stage baseline: training" not in log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher"]["source"] == "cache"
    assert json.loads(records["baseline"])["result"]["acc"] == summary["baseline"]["acc"]
    # The interrupted checkpoint is consumed, and the student's record is written like the others.
    assert not (run / "student" / "checkpoints" / "interrupted.ckpt").exists()
    assert json.loads((run / "student" / "stage.json").read_text())["result"]["acc"] == summary["student"]["acc"]


@pytest.mark.slow
def test_a_tampered_finished_stage_runs_again_on_resume(tmp_path):
    marker = tmp_path / "killed"
    args = [*FAST, "hydra.run.dir=run", "+callbacks.killer._target_=killer.SigtermAtStep",
            "+callbacks.killer.stage=student", "+callbacks.killer.step=2", f"+callbacks.killer.marker={marker}"]
    assert cli(*args, cwd=tmp_path).returncode != 0
    weights = tmp_path / "run" / "baseline" / "weights.pt"
    state = torch.load(weights, weights_only=True)
    torch.save({k: -v if v.is_floating_point() else v for k, v in state.items()}, weights)
    second = cli(*args, "resume=true", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "does not match its recorded digest; running the stage again" in log
    assert "stage baseline: training" in log
