"""kd_lightning/app/train.py, eval.py and export.py as console scripts: kd-train, then kd-eval and kd-export on its
student checkpoint, and bad input reported as one clear line."""
from __future__ import annotations

import json

import pytest

from .helpers import FAST, cli


@pytest.mark.slow
def test_cli_train_eval_export(tmp_path):
    proc = cli("kd-train", *FAST, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "Compression" in proc.stdout
    ev = cli("kd-eval", f"ckpt_path={run_dir / 'student.ckpt'}", "hydra.run.dir=eval", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert f"test/acc: {summary['student']['acc']:.4f}" in ev.stdout
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        ex = cli("kd-export", f"ckpt_path={run_dir / 'student.ckpt'}", f"format={fmt}", "hydra.run.dir=export",
                 cwd=tmp_path)
        assert ex.returncode == 0, ex.stderr[-3000:]
        assert (run_dir / f"student{suffix}").is_file() and "outputs match" in ex.stdout


@pytest.mark.slow
def test_cli_errors_are_one_clear_line(tmp_path):
    proc = cli("kd-train", "distill.temperature=-1", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode != 0
    assert "temperature must be a positive" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("kd-train", "teacher=no_such_net", cwd=tmp_path)
    assert proc.returncode != 0 and "no_such_net" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("kd-train", "teacher.ckpt_path=missing.ckpt", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode != 0 and "missing.ckpt" in proc.stderr and "Traceback" not in proc.stderr
