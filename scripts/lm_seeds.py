#!/usr/bin/env python
"""Run `kd-train experiment=lm_pydoc` over several seeds; print perplexity and bits per byte (mean ± std).

    python scripts/lm_seeds.py                                   # seeds 1 2 3
    python scripts/lm_seeds.py --seeds 1 2 3 -- distill.divergence=reverse
    python scripts/lm_seeds.py --collect outputs/lm_seeds        # tables from finished runs only

Each seed is a full `kd-train` run (its own teacher: the teacher cache is keyed by the seed); the wall time
is the whole command's, imports included, and cpu_s its CPU time (the default runs one intra-op thread, so
on an otherwise idle machine the wall time is about cpu_s). The last line says whether the distilled student's mean held-out
perplexity beats the labels-only baseline's by more than the seeds' spread (std of baseline + std of student).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("teacher", "baseline", "student")


def row_of(seed: int, summary: dict, wall: float | None, cpu: float | None = None) -> dict:
    row = {"seed": seed, "wall_s": wall, "cpu_s": cpu}
    for stage in STAGES:
        if stage in summary:
            row[f"{stage}/ppl"] = summary[stage]["ppl"]
            row[f"{stage}/bpb"] = summary[stage].get("bpb")
    row["gap_closed"] = summary.get("gap_closed")
    return row


def table(rows: list) -> str:
    keys = [k for k in rows[0] if k != "seed" and all(r.get(k) is not None for r in rows)]
    lines = ["| | " + " | ".join(f"seed {r['seed']}" for r in rows) + " | mean ± std |",
             "|---|" + "---|" * (len(rows) + 1)]
    for key in keys:
        vals = [float(r[key]) for r in rows]
        fmt = ".3f" if key.endswith("bpb") or key == "gap_closed" else ".1f"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(f"| {key} | " + " | ".join(format(v, fmt) for v in vals)
                     + f" | {format(statistics.mean(vals), fmt)} ± {format(sd, fmt)} |")
    return "\n".join(lines)


def verdict(rows: list) -> str:
    base = [r["baseline/ppl"] for r in rows if "baseline/ppl" in r]
    stud = [r["student/ppl"] for r in rows]
    if len(base) != len(stud) or len(stud) < 2:
        return "need >= 2 seeds with a baseline for the spread"
    gap = statistics.mean(base) - statistics.mean(stud)
    spread = statistics.stdev(base) + statistics.stdev(stud)
    per_seed = [b - s for b, s in zip(base, stud)]
    return (f"distilled beats labels-only by {gap:.1f} ppl on average (every seed: {min(per_seed):.1f} to "
            f"{max(per_seed):.1f}); spread of the seeds (std baseline + std student) {spread:.1f}: "
            + ("YES, more than the spread" if gap > spread else "NO, not more than the spread"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="outputs/lm_seeds")
    parser.add_argument("--collect", metavar="DIR", help="only read DIR/seed*/summary.json")
    parser.add_argument("overrides", nargs="*", help="extra kd-train overrides (after --)")
    args = parser.parse_args()
    rows = []
    if args.collect:
        for path in sorted(Path(args.collect).glob("seed*/summary.json")):
            s = json.loads(path.read_text())
            rows.append(row_of(int(s.get("seed", path.parent.name[4:])), s, None))
    else:
        exe = Path(sys.executable).parent / "kd-train"
        for seed in args.seeds:
            run_dir = Path(args.out) / f"seed{seed}"
            cmd = [str(exe), "experiment=lm_pydoc", f"seed={seed}", f"hydra.run.dir={run_dir}",
                   "trainer.enable_progress_bar=false", *args.overrides]
            t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)  # the run's CPU seconds (one thread)
            rows.append(row_of(seed, json.loads((run_dir / "summary.json").read_text()), time.perf_counter() - t0, cpu))
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()
                                              if k != "seed" and v is not None), flush=True)
    if not rows:
        raise SystemExit("no summaries found")
    print()
    print(table(rows))
    print()
    print(verdict(rows))


if __name__ == "__main__":
    main()
