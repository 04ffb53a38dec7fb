"""The teacher stage of a language-model run goes through the teacher store like a classifier's: two
kd-train processes that need the same LM teacher at the same time train it once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from .test_lm_pipeline import TINY, TINY_TEACHER  # noqa: E402


def start(*args: str, cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "kd-train"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kd_lightning.app.train"]
    env = {**os.environ, "KD_CACHE_DIR": str(cwd / "cache"), "KD_LOG_DIR": str(cwd / "outputs"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd + list(args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
def test_two_lm_runs_sharing_a_cache_dir_train_the_teacher_once(tmp_path):
    # Enough teacher steps that the two runs overlap: the second reaches the store while the first trains.
    args = [*TINY, *TINY_TEACHER, "teacher_fit.max_steps=150", "baseline.enabled=false", "trainer.max_steps=2",
            "samples.prompts=[]"]
    procs = [start(*args, f"hydra.run.dir=run{i}", cwd=tmp_path) for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    summaries = [json.loads((tmp_path / f"run{i}" / "summary.json").read_text()) for i in range(2)]
    assert sorted(s["teacher"]["source"] for s in summaries) == ["store", "trained"]
    (entry,) = (tmp_path / "cache" / "teachers").iterdir()  # one teacher, one store entry
    assert (entry / "teacher.ckpt").is_file()
    assert sum("stage teacher: training" in log for log in logs) == 1
    assert any("waiting for" in log for log in logs), "the runs did not overlap: the lock was not exercised"
    # Both students distilled from the same weights: the teacher's measured perplexity agrees.
    assert summaries[0]["teacher"]["ppl"] == pytest.approx(summaries[1]["teacher"]["ppl"], rel=1e-5)
