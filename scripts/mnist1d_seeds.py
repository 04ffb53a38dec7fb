#!/usr/bin/env python
"""Run kd-train over several seeds and print teacher / baseline / student accuracy (mean ± std).

    python scripts/mnist1d_seeds.py                       # the default job, seeds 1 2 3
    python scripts/mnist1d_seeds.py --seeds 1 2 3 -- experiment=mnist1d_paper

Each seed is a full `kd-train` run (its own teacher, since the teacher cache is keyed by the seed);
the wall time printed is the whole command's, imports included. Outputs go under --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="outputs/seeds")
    parser.add_argument("overrides", nargs="*", help="extra kd-train overrides (after --)")
    args = parser.parse_args()
    exe = Path(sys.executable).parent / "kd-train"
    rows = []
    for seed in args.seeds:
        run_dir = Path(args.out) / f"seed{seed}"
        cmd = [str(exe), f"seed={seed}", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false",
               *args.overrides]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        s = json.loads((run_dir / "summary.json").read_text())
        rows.append({"seed": seed, "wall_s": wall, **{k: s[k]["acc"] for k in ("teacher", "baseline", "student") if k in s}})
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) and k != "wall_s" else f"{k} {v:.0f}"
                                          for k, v in rows[-1].items() if k != "seed"), flush=True)
    print()
    print("| model | " + " | ".join(f"seed {r['seed']}" for r in rows) + " | mean ± std |")
    print("|---|" + "---|" * (len(rows) + 1))
    for key in ("teacher", "baseline", "student", "wall_s"):
        if key not in rows[0]:
            continue
        vals = [r[key] for r in rows]
        scale, unit = (100.0, "%") if key != "wall_s" else (1.0, " s")
        cells = " | ".join(f"{scale * v:.1f}{unit}" for v in vals)
        sd = statistics.stdev(vals) * scale if len(vals) > 1 else 0.0
        print(f"| {key} | {cells} | {scale * statistics.mean(vals):.1f} ± {sd:.1f}{unit} |")


if __name__ == "__main__":
    main()
