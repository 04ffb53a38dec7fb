"""A run owns its directory, two runs started together never share one, and a sweep survives bad jobs
and lists only its own jobs."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose_config

from kd_lightning.app import rundir
from kd_lightning.app.errors import ConfigError

FAST = ["trainer.max_epochs=2", "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0",
        # the report's latency as a smoke test (timing each model properly is most of a tiny run)
        "latency.warmup=1", "latency.min_repeats=2", "latency.min_seconds=0"]


def make_cfg(tmp_path: Path, *overrides: str):
    return compose_config(tmp_path, *overrides)


def test_a_run_directory_belongs_to_one_config(tmp_path):
    out = tmp_path / "run"
    assert rundir.claim(make_cfg(tmp_path, "distill.temperature=4")) is False
    (out / "summary.json").write_text("{}")
    (out / "train.log").write_text("")
    # The same config may run there again (and with resume=true continue).
    assert rundir.claim(make_cfg(tmp_path, "distill.temperature=4")) is True
    assert rundir.claim(make_cfg(tmp_path, "distill.temperature=4", "resume=true")) is True
    # Another config is refused, naming the directory and what differs.
    with pytest.raises(ConfigError, match=r"holds the outputs of another config \(distill.temperature: 4 -> 2\)"):
        rundir.claim(make_cfg(tmp_path, "distill.temperature=2"))
    with pytest.raises(ConfigError, match="resume=true continues only the same config"):
        rundir.claim(make_cfg(tmp_path, "distill.temperature=2", "resume=true"))
    assert json.loads((out / rundir.FINGERPRINT).read_text())["config"]["distill"]["temperature"] == 4


def test_a_directory_with_unknown_outputs_is_refused_and_an_empty_one_is_taken(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".hydra").mkdir()
    (out / "train.log").write_text("")
    assert rundir.claim(make_cfg(tmp_path)) is False  # only Hydra's own files: an empty run directory
    (out / rundir.FINGERPRINT).unlink()
    (out / "student.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"already holds student.ckpt from a run kd-train cannot identify"):
        rundir.claim(make_cfg(tmp_path))


def test_resume_needs_an_earlier_run(tmp_path):
    with pytest.raises(ConfigError, match="resume=true but .* holds no earlier run"):
        rundir.claim(make_cfg(tmp_path, "resume=true"))


def cli(tool, *args, cwd, popen=False):
    exe = Path(sys.executable).parent / tool
    env = {**os.environ, "KD_CACHE_DIR": str(cwd / "cache"), "KD_LOG_DIR": str(cwd / "outputs"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen([str(exe), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_runs_started_together_get_their_own_directories(tmp_path):
    procs = [cli("kd-train", "generations=0", cwd=tmp_path, popen=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode != 0 and "generations=0" in err and "Traceback" not in err
    runs = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 3, runs
    pids = {r.name.rsplit("_", 1)[1].split("-")[0] for r in runs}
    assert pids == {str(p.pid) for p in procs}


@pytest.mark.slow
def test_cli_refuses_another_configs_run_directory(tmp_path):
    first = cli("kd-train", *FAST, "baseline.enabled=false", "hydra.run.dir=run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = (tmp_path / "run" / "summary.json").read_bytes()
    second = cli("kd-train", *FAST, "baseline.enabled=false", "distill.temperature=2", "hydra.run.dir=run",
                 cwd=tmp_path)
    assert second.returncode != 0
    assert f"kd-train: error: run directory '{tmp_path / 'run'}' holds the outputs of another config" in second.stderr
    assert "distill.temperature: 1.0 -> 2" in second.stderr and "Traceback" not in second.stderr
    assert (tmp_path / "run" / "summary.json").read_bytes() == before  # the first run's outputs are intact


@pytest.mark.slow
def test_sweep_survives_failing_jobs_and_lists_only_its_own(tmp_path):
    sweep = tmp_path / "sweep"
    stale = sweep / "7"  # a job left by an earlier sweep in the same directory
    stale.mkdir(parents=True)
    (stale / "summary.json").write_text(json.dumps({"student": {"acc": 0.99}}))
    rundir.write_job_status(stale, "ok", "an-earlier-sweep")
    proc = cli("kd-train", "-m", "trainer.precision=32-true,bogus", "optim.optimizer.lr=0.01,-1", *FAST,
               "baseline.enabled=false", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert proc.returncode != 0
    assert "kd-train: 3 of 4 sweep jobs failed" in proc.stderr, proc.stderr[-3000:]
    with open(sweep / "sweep_summary.csv") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["0", "1", "2", "3"]  # job 7 belongs to another sweep
    assert rows["0"]["status"] == "ok" and float(rows["0"]["student/acc"]) >= 0
    # Bad values, each one line before training: lr=-1 (job 1), an unknown precision (jobs 2 and 3; job 3 has
    # both, and the precision is checked first).
    assert rows["1"]["status"] == "failed" and "optim.optimizer.lr=-1 must be a positive number" in rows["1"]["error"]
    for job in ("2", "3"):
        assert rows[job]["status"] == "failed"
        assert "trainer.precision='bogus' is not a precision Lightning knows" in rows[job]["error"]
    for job in "0123":
        status = json.loads((sweep / job / "job_status.json").read_text())
        assert status["sweep_id"] == rundir.sweep_id(sweep)
    md = (sweep / "sweep_summary.md").read_text()
    assert "failed" in md and "| ok |" in md


# --------------------------------------------------------------- one process per directory, leftovers, full disks
HOLDER = ("import sys; from pathlib import Path; from kd_lightning.app import rundir; rundir.hold(Path(sys.argv[1])); "
          "print('held', flush=True); sys.stdin.read()")


def test_a_directory_held_by_another_process_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"^run directory '{out}' is in use by another kd-train process; wait "
                                              r"for it to end, or run in a new directory"):
            rundir.claim(make_cfg(tmp_path))
        assert not (out / rundir.FINGERPRINT).exists()  # the refused run wrote nothing there
    finally:
        holder.communicate("", timeout=60)
    assert rundir.claim(make_cfg(tmp_path)) is False  # its process ended: the kernel dropped the lock
    assert rundir.claim(make_cfg(tmp_path)) is False  # and this process may claim it again


def test_leftovers_of_killed_writers_are_removed_and_outputs_kept(tmp_path):
    out = tmp_path / "run"
    (out / "student" / "checkpoints").mkdir(parents=True)
    leftovers = [out / ".summary.json.0123456789ab.tmp", out / "student" / "checkpoints" / ".last.ckpt.a1b2c3d4e5f6.tmp",
                 out / ".student.onnx.tmp-4242"]
    kept = [out / "student" / "weights.pt", out / ".hidden_note", out / "notes.tmp"]
    for path in leftovers + kept:
        path.write_bytes(b"x")
    (out / rundir.FINGERPRINT).write_text(json.dumps({"fingerprint": rundir.fingerprint(make_cfg(tmp_path))}))
    assert rundir.claim(make_cfg(tmp_path)) is True
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in kept)


def test_unwritable_paths_are_one_line_naming_the_path(tmp_path):
    import errno

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / ".summary.json.0123456789ab.tmp"))
    assert rundir.write_error(full) == (f"cannot write '{tmp_path / 'run' / 'summary.json'}' (No space left on device): "
                                        "the disk is full; free space there or set paths.output_dir / paths.cache_dir "
                                        "to another disk")
    assert "read-only" in rundir.write_error(OSError(errno.EROFS, "Read-only file system", "/mnt/x"))
    assert rundir.write_error(OSError(errno.ENOENT, "No such file", "/x")) is None
    assert rundir.write_error(ValueError("no")) is None
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    with pytest.raises(ConfigError, match=rf"^run directory '{blocked / 'run'}' cannot be written \(NotADirectoryError: "):
        rundir.hold(blocked / "run")
    if os.geteuid() != 0:  # root writes anywhere; everyone else meets the permission
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match=rf"^run directory '{locked}' cannot be written \(PermissionError: "):
            rundir.hold(locked)


@pytest.mark.slow
def test_two_runs_started_at_once_on_one_directory(tmp_path):
    procs = [cli("kd-train", *FAST, "baseline.enabled=false", "hydra.run.dir=run", cwd=tmp_path, popen=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, [err[-2000:] for _, err in results]
    refused = next(err for code, err in results if code != 0)
    assert "is in use by another kd-train process" in refused and "Traceback" not in refused
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["student"]["acc"] > 0


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing_half_written(tmp_path):
    env = {**os.environ, "KD_CACHE_DIR": str(tmp_path / "cache"), "KD_LOG_DIR": str(tmp_path / "outputs"),
           "OMP_NUM_THREADS": "1", "KD_TEST_SIGTERM_AT": "full_disk",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "killer.py"), *FAST, "baseline.enabled=false",
                           "hydra.run.dir=run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    run = tmp_path / "run"
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"kd-train: error: cannot write '{run.resolve() / 'summary.json'}' (No space left on device): the disk is " \
           "full" in proc.stderr
    assert not (run / "summary.json").exists() and not list(run.rglob(".*.tmp"))
