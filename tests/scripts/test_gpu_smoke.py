"""scripts/gpu_smoke.py --lm runs end to end (a miniature on the CPU; the real case needs a GPU)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_smoke.py"


@pytest.mark.slow
def test_lm_case_runs_its_steps_and_reports_tokens_per_second():
    out = subprocess.run([sys.executable, str(SCRIPT), "--lm", "--tiny", "--cpu", "--steps", "5", "--warmup", "1",
                          "--batch-size", "2", "--seq-len", "16", "--vocab", "64"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("gpu_smoke --lm:")]
    assert "tokens/s over 4 timed steps of 2 x 16 tokens" in lines[1] and lines[-1].endswith("OK")
