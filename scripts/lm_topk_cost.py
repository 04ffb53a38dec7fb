#!/usr/bin/env python
"""What a stored top-K teacher costs: disk per token and held-out perplexity against the online teacher.

    python scripts/lm_topk_cost.py                       # seeds 1 2 3, K = 8 32 128 (two kd-train sweeps)
    python scripts/lm_topk_cost.py --tail-ks 8,32        # also the tail-bucket loss at K = 8, 32 (a third sweep)
    python scripts/lm_topk_cost.py --collect outputs/lm_topk/online outputs/lm_topk/cached [outputs/lm_topk/tail]

It runs the two sweeps below (the teachers are trained once per seed and cached; the labels-only baseline
is the same in both, so it is skipped) and reads every job's summary.json:

    kd-train -m experiment=lm_pydoc seed=1,2,3 baseline.enabled=false
    kd-train -m experiment=lm_pydoc seed=1,2,3 baseline.enabled=false \\
        distill.teacher_outputs=true distill.teacher_outputs_top_k=8,32,128
    (--tail-ks: the same with distill.teacher_outputs_tail=true distill.teacher_outputs_top_k=<tail-ks>)

For each K (and loss: renormalised over the K ids, or with the rest of the mass as a tail bucket): bytes per token on disk, the student's held-out perplexity (mean ± std over the seeds) and its
difference to the online teacher's student of the same seed (mean ± std, positive = worse). The last line
is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SWEEPS = {
    "online": [],
    "cached": ["distill.teacher_outputs=true", "distill.teacher_outputs_top_k={ks}"],
    "tail": ["distill.teacher_outputs=true", "distill.teacher_outputs_top_k={tail_ks}", "distill.teacher_outputs_tail=true"],
}


def summaries(sweep_dir: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]


def mean_sd(values: list) -> tuple:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(online_dir: Path, *cached_dirs: Path) -> dict:
    online = {s["seed"]: s["student"]["ppl"] for s in summaries(online_dir)}
    by_k: dict = defaultdict(dict)
    stored: dict = {}
    for cached_dir in cached_dirs:
        for s in summaries(cached_dir):
            cache = s["student"]["teacher_outputs"]
            key = (cache["top_k"], bool(cache.get("tail", False)))
            by_k[key][s["seed"]] = s["student"]["ppl"]
            stored[key] = cache
    if not online or not by_k:
        raise SystemExit(f"no summaries under {online_dir} or {', '.join(map(str, cached_dirs))}")
    teacher = [s["teacher"]["ppl"] for s in summaries(online_dir)]
    rows = [{"k": "online", "bytes_per_token": None, "ppl": mean_sd(list(online.values())), "delta": None}]
    for k in sorted(by_k):
        seeds = sorted(set(by_k[k]) & set(online))
        rows.append({"k": k[0], "tail": k[1], "bytes_per_token": stored[k]["bytes_per_token"], "mb": stored[k]["bytes"] / 2 ** 20,
                     "dense": stored[k]["dense_fp32_bytes_per_token"], "prepare_s": stored[k].get("prepare_s"),
                     "ppl": mean_sd([by_k[k][s] for s in seeds]),
                     "delta": mean_sd([by_k[k][s] - online[s] for s in seeds])})
    return {"seeds": sorted(online), "teacher_ppl": mean_sd(teacher), "rows": rows}


def table(result: dict) -> str:
    lines = ["| teacher signal | bytes / token | student ppl | vs online (same seed) |", "|---|---|---|---|"]
    for r in result["rows"]:
        ppl = f"{r['ppl'][0]:.1f} ± {r['ppl'][1]:.1f}"
        if r["k"] == "online":
            lines.append(f"| online teacher (dense, fp32) | — | {ppl} | — |")
        else:
            loss = "tail bucket" if r["tail"] else "renormalised"
            lines.append(f"| stored top-{r['k']}, {loss} | {r['bytes_per_token']:.0f} ({r['mb']:.1f} MB) | {ppl} | "
                         f"{r['delta'][0]:+.1f} ± {r['delta'][1]:.1f} |")
    dense = next((r["dense"] for r in result["rows"] if r["k"] != "online"), None)
    if dense:
        lines.append(f"\nDense fp32 logits would take {dense:,} bytes per token. Teacher ppl "
                     f"{result['teacher_ppl'][0]:.1f} ± {result['teacher_ppl'][1]:.1f}; seeds {result['seeds']}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--ks", default="8,32,128")
    parser.add_argument("--tail-ks", default="", help="K values for the tail-bucket loss (default: none)")
    parser.add_argument("--out", default="outputs/lm_topk")
    parser.add_argument("--collect", nargs="+", metavar="DIR", help="ONLINE_DIR CACHED_DIR [MORE_CACHED_DIRS]")
    args = parser.parse_args()
    if args.collect:
        if len(args.collect) < 2:
            parser.error("--collect needs the online sweep's directory and at least one cached sweep's")
        dirs = [Path(d) for d in args.collect]
    else:
        exe = Path(sys.executable).parent / "kd-train"
        dirs = []
        for name, extra in SWEEPS.items():
            if name == "tail" and not args.tail_ks:
                continue
            cmd = [str(exe), "-m", "experiment=lm_pydoc", f"seed={args.seeds}", "baseline.enabled=false",
                   "trainer.enable_progress_bar=false", f"hydra.sweep.dir={Path(args.out) / name}",
                   *[e.format(ks=args.ks, tail_ks=args.tail_ks) for e in extra]]
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            dirs.append(Path(args.out) / name)
    result = collect(*dirs)
    print(table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
