"""scripts/lm_topk_cost.py: its table from two sweep directories (hand-made summaries, so the arithmetic is
checked; the real sweeps are the README's measurement)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lm_topk_cost.py"


def job(root: Path, i: int, seed: int, ppl: float, k=None, tail=False):
    student = {"ppl": ppl}
    if k:
        student["teacher_outputs"] = {"top_k": k, "bytes_per_token": 6 * k + 4, "bytes": 2 ** 20, "tail": tail,
                                    "dense_fp32_bytes_per_token": 8192, "prepare_s": 1.0}
    (root / str(i)).mkdir(parents=True)
    (root / str(i) / "summary.json").write_text(json.dumps({"seed": seed, "teacher": {"ppl": 27.0}, "student": student}))


def test_table_and_json_from_two_sweeps(tmp_path):
    online, cached = tmp_path / "online", tmp_path / "cached"
    for i, (seed, ppl) in enumerate([(1, 70.0), (2, 80.0)]):
        job(online, i, seed, ppl)
    for i, (seed, k, ppl) in enumerate([(1, 8, 75.0), (2, 8, 81.0), (1, 32, 70.5), (2, 32, 80.5)]):
        job(cached, i, seed, ppl, k)
    tail = tmp_path / "tail"
    for i, (seed, ppl) in enumerate([(1, 72.0), (2, 80.0)]):
        job(tail, i, seed, ppl, 8, tail=True)
    run = subprocess.run([sys.executable, str(SCRIPT), "--collect", str(online), str(cached), str(tail)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    rows = {(r["k"], r.get("tail")): r for r in result["rows"]}
    assert rows[("online", None)]["ppl"] == [75.0, 7.0710678118654755]
    # per-seed differences: (5, 1), (.5, .5), (2, 0)
    assert rows[(8, False)]["delta"][0] == 3.0 and rows[(32, False)]["delta"] == [0.5, 0.0]
    assert rows[(8, True)]["delta"][0] == 1.0 and rows[(8, False)]["bytes_per_token"] == 52
    assert "| stored top-8, renormalised | 52 (1.0 MB) | 78.0 ± 4.2 | +3.0 ± 2.8 |" in run.stdout
    assert "| stored top-8, tail bucket | 52 (1.0 MB) | 76.0 ± 5.7 | +1.0 ± 1.4 |" in run.stdout
