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
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0",
        # the report's latency as a smoke test (timing each model properly is most of a tiny run)
        "latency.warmup=1", "latency.min_repeats=2", "latency.min_seconds=0"]


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
    assert ckpt["global_step"] == 6 and ckpt["optimizer_states"] and "ExactResume" in ckpt["callbacks"]
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
    assert summary["teacher"]["source"] == summary["baseline"]["source"] == "resumed"  # this run's own records
    assert json.loads(records["baseline"])["result"]["acc"] == summary["baseline"]["acc"]
    # The interrupted checkpoint is consumed, and the student's record is written like the others.
    assert not (run / "student" / "checkpoints" / "interrupted.ckpt").exists()
    assert json.loads((run / "student" / "stage.json").read_text())["result"]["acc"] == summary["student"]["acc"]


@pytest.mark.slow
def test_a_tampered_finished_stage_runs_again_on_resume(tmp_path):
    marker = tmp_path / "killed"
    # Without the baseline in the teacher store, a rejected record can only be trained again.
    args = [*FAST, "hydra.run.dir=run", "+callbacks.killer._target_=killer.SigtermAtStep", "baseline.use_store=false",
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


def cli_sigterm_at(point: str, *args, cwd):
    """kd-train's entry point run by killer.py, which sends SIGTERM once at ``point`` (outside any fit)."""
    env = {**os.environ, "KD_CACHE_DIR": str(cwd / "cache"), "KD_LOG_DIR": str(cwd / "outputs"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "KD_TEST_SIGTERM_AT": point,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    script = Path(__file__).parent / "killer.py"
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def assert_interrupted_in_one_line(proc, run):
    assert proc.returncode not in (0, None), proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "interrupted by SIGTERM" in line]
    assert len(lines) == 1 and lines[0].startswith("kd-train: interrupted by SIGTERM") and "resume=true" in lines[0]
    assert "Traceback" not in proc.stderr
    assert json.loads((run / "job_status.json").read_text())["status"] == "interrupted"
    assert not list(run.rglob(".*.tmp")), list(run.rglob(".*.tmp"))  # no temporary file left behind


@pytest.mark.slow
def test_sigterm_while_the_report_is_written_exits_non_zero_and_resume_finishes(tmp_path):
    args = [*FAST, "hydra.run.dir=run"]
    first = cli_sigterm_at("report", *args, cwd=tmp_path)
    run = tmp_path / "run"
    assert_interrupted_in_one_line(first, run)
    assert not (run / "summary.json").exists()  # the half-written summary never got its name
    assert all((run / s / "stage.json").is_file() for s in ("teacher", "baseline", "student"))

    second = cli(*args, "resume=true", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stage student: finished earlier, read back" in second.stdout + second.stderr
    assert json.loads((run / "summary.json").read_text())["student"]["acc"] > 0


@pytest.mark.slow
def test_sigterm_while_teacher_outputs_are_stored_leaves_nothing_a_later_run_trusts(tmp_path):
    args = [*FAST, "hydra.run.dir=run", "experiment=mnist1d_kd", "distill.teacher_outputs=true"]
    first = cli_sigterm_at("teacher_outputs", *args, cwd=tmp_path)
    run = tmp_path / "run"
    assert_interrupted_in_one_line(first, run)
    outputs = tmp_path / "cache" / "teacher_outputs"
    assert not list(outputs.rglob("meta.json")) and not list(outputs.rglob(".*.tmp"))  # nothing marked complete

    second = cli(*args, "resume=true", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "teacher outputs stored" in second.stdout + second.stderr
    assert list(outputs.rglob("meta.json")) and (run / "summary.json").is_file()


def test_the_guard_restores_the_previous_handler_and_leaves_trainer_runs_to_lightning():
    import signal

    from kd_lightning.app.interrupt import Interrupted, SigtermGuard

    before = signal.getsignal(signal.SIGTERM)
    with SigtermGuard() as guard:
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
        # Inside a Trainer run Lightning's handler is installed and calls the one it found: only recorded.
        lightning_like = signal.signal(signal.SIGTERM, lambda s, f: guard.handle(s, f))
        os.kill(os.getpid(), signal.SIGTERM)
        signal.signal(signal.SIGTERM, lightning_like)
        assert guard.received
    assert signal.getsignal(signal.SIGTERM) == before
    import kd_lightning.app.train  # noqa: F401  importing the entry point installs nothing
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.slow
def test_ctrl_c_in_the_middle_of_a_stage_is_handled_as_sigterm(tmp_path):
    marker = tmp_path / "killed"
    args = [*FAST, "hydra.run.dir=run", "+callbacks.killer._target_=killer.SigtermAtStep", "+callbacks.killer.sig=SIGINT",
            "+callbacks.killer.stage=baseline", "+callbacks.killer.step=3", f"+callbacks.killer.marker={marker}"]
    first = cli(*args, cwd=tmp_path)
    run = tmp_path / "run"
    assert first.returncode != 0 and "Traceback" not in first.stderr, first.stderr[-3000:]
    lines = [line for line in first.stderr.splitlines() if "interrupted by" in line]
    assert len(lines) == 1 and lines[0].startswith("kd-train: interrupted by SIGINT; the running stage saved a "
                                                   "resumable checkpoint") and "resume=true" in lines[0], lines
    ckpt = torch.load(run / "baseline" / "checkpoints" / "interrupted.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["optimizer_states"]
    assert json.loads((run / "job_status.json").read_text())["error"] == "SIGINT"
    second = cli(*args, "resume=true", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stage baseline: resuming" in second.stdout + second.stderr


def test_sigint_is_handled_as_sigterm_and_a_second_one_stops_at_once():
    import signal

    from kd_lightning.app.interrupt import Interrupted, SigtermGuard, signal_name

    before = signal.getsignal(signal.SIGINT)
    with SigtermGuard() as guard:  # outside a Trainer run: stop right here, like SIGTERM
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal_name() == "SIGINT"
    with SigtermGuard() as guard:  # inside one: the SIGTERM handler in place (Lightning's) gets the signal
        calls = []
        lightning_like = signal.signal(signal.SIGTERM, lambda s, f: (calls.append(s), guard.handle(s, f)))
        os.kill(os.getpid(), signal.SIGINT)
        assert calls == [signal.SIGTERM] and guard.received and guard.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # the impatient second Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        signal.signal(signal.SIGTERM, lightning_like)
    assert signal.getsignal(signal.SIGINT) == before and signal_name() == "SIGTERM"
