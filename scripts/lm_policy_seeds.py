#!/usr/bin/env python
"""On-policy distillation and sequence-level KD against supervised KD, over seeds, on prompt/response data.

    python scripts/lm_policy_seeds.py                             # seeds 1 2 3, five methods
    python scripts/lm_policy_seeds.py --seeds 1 -- trainer.max_steps=50
    python scripts/lm_policy_seeds.py --collect outputs/lm_policy_seeds   # the table from finished runs

Every run is `kd-train experiment=lm_pydoc_pairs` (pydoc topics cut into 32-token prompts and 32-token
responses, the loss and held-out perplexity on responses only). Per seed, four runs share one teacher (the
first trains and caches it, the others read it back):

    labels-only baseline + supervised KD   distill.on_policy.lam=0 (forward KL on the data's responses)
    on-policy lam=0.5                      distill.on_policy.lam=0.5 baseline.enabled=false
    on-policy lam=1                        distill.on_policy.lam=1 baseline.enabled=false
    sequence-level KD                      distill.sequence_kd=true distill.ce_weight=1 distill.kd_weight=0

Two numbers per model: the held-out response perplexity (lower is better) and the teacher's perplexity of
the model's own samples from the held-out prompts (same seed and sampling for every model; lower means the
model writes what the teacher finds likely). The table gives each seed and mean ± std (sample std); a line
per method says whether its mean differs from supervised KD's by more than the seeds' spread (std of the
method + std of supervised KD). The last line is a JSON object with every number.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

EXPERIMENT = "experiment=lm_pydoc_pairs"
# name -> (kd-train overrides, the stage of summary.json that holds the method's model)
RUNS = {
    "kd": (["distill.on_policy.lam=0"], "student"),
    "on_policy_0.5": (["distill.on_policy.lam=0.5", "baseline.enabled=false"], "student"),
    "on_policy_1": (["distill.on_policy.lam=1", "baseline.enabled=false"], "student"),
    "seqkd": (["distill.sequence_kd=true", "distill.ce_weight=1", "distill.kd_weight=0", "baseline.enabled=false"],
              "student"),
}
# Rows of the table: (label, run, stage)
ROWS = [
    ("teacher (1.04M)", "kd", "teacher"),
    ("labels-only baseline", "kd", "baseline"),
    ("supervised KD (λ=0)", "kd", "student"),
    ("on-policy KD (λ=0.5)", "on_policy_0.5", "student"),
    ("on-policy KD (λ=1)", "on_policy_1", "student"),
    ("sequence-level KD", "seqkd", "student"),
]
METRICS = (("ppl", "held-out response perplexity"), ("teacher_ppl_of_samples", "teacher perplexity of own samples"))


def run_one(exe: Path, seed: int, name: str, out: Path, extra: List[str]) -> Dict:
    run_dir = out / f"seed{seed}" / name
    overrides, _ = RUNS[name]
    cmd = [str(exe), EXPERIMENT, f"seed={seed}", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false",
           *overrides, *extra]
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, cpu = time.perf_counter() - t0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if proc.returncode != 0:
        print(f"seed {seed} {name}: FAILED ({proc.stderr.strip().splitlines()[-1:]})", flush=True)
        return {}
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"seed {seed} {name}: {wall:.0f}s wall, {cpu:.0f}s CPU; " + ", ".join(
        f"{stage} ppl {summary[stage]['ppl']:.1f} / teacher ppl of samples "
        f"{summary[stage].get('teacher_ppl_of_samples', float('nan')):.1f}"
        for stage in ("teacher", "baseline", "student") if stage in summary), flush=True)
    return summary


def collect(out: Path, seeds: List[int]) -> Dict[int, Dict[str, Dict]]:
    found: Dict[int, Dict[str, Dict]] = {}
    for seed in seeds:
        for name in RUNS:
            path = out / f"seed{seed}" / name / "summary.json"
            if path.is_file():
                found.setdefault(seed, {})[name] = json.loads(path.read_text())
    return found


def values(summaries: Dict[int, Dict[str, Dict]], seeds: List[int], run: str, stage: str, metric: str) -> List[Optional[float]]:
    out = []
    for seed in seeds:
        value = ((summaries.get(seed) or {}).get(run) or {}).get(stage) or {}
        out.append(value.get(metric))
    return out


def mean_std(vals: List[Optional[float]]) -> tuple:
    got = [v for v in vals if v is not None]
    if not got:
        return None, None
    return statistics.mean(got), (statistics.stdev(got) if len(got) > 1 else 0.0)


def tables(summaries: Dict[int, Dict[str, Dict]], seeds: List[int]) -> str:
    lines = []
    for metric, title in METRICS:
        lines += [f"{title}:", "", "| model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
                  "|---|" + "---|" * (len(seeds) + 1)]
        for label, run, stage in ROWS:
            vals = values(summaries, seeds, run, stage, metric)
            mean, std = mean_std(vals)
            cells = ["—" if v is None else f"{v:.1f}" for v in vals]
            lines.append(f"| {label} | " + " | ".join(cells) + " | "
                         + ("—" if mean is None else f"{mean:.1f} ± {std:.1f}") + " |")
        lines.append("")
    return "\n".join(lines)


def verdicts(summaries: Dict[int, Dict[str, Dict]], seeds: List[int]) -> List[str]:
    """Each method against supervised KD (λ=0), per metric: the difference of the means and the spread."""
    out = []
    for metric, title in METRICS:
        ref_mean, ref_std = mean_std(values(summaries, seeds, "kd", "student", metric))
        for label, run, stage in ROWS[1:]:
            if (run, stage) == ("kd", "student"):
                continue
            mean, std = mean_std(values(summaries, seeds, run, stage, metric))
            if mean is None or ref_mean is None:
                continue
            diff, spread = mean - ref_mean, std + ref_std
            out.append(f"{title}: {label} {mean:.1f} vs supervised KD {ref_mean:.1f} ({diff:+.1f}); spread "
                       f"{spread:.1f}: " + ("more than the spread" if abs(diff) > spread else "within the spread"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="outputs/lm_policy_seeds")
    parser.add_argument("--collect", metavar="DIR", help="only read DIR/seed*/<method>/summary.json")
    parser.add_argument("overrides", nargs="*", help="extra kd-train overrides for every run (after --)")
    args = parser.parse_args()
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    out = Path(args.collect or args.out)
    if not args.collect:
        exe = Path(sys.executable).parent / "kd-train"
        for seed in args.seeds:
            for name in RUNS:
                run_one(exe, seed, name, out, args.overrides)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    summaries = collect(out, args.seeds)
    if not summaries:
        raise SystemExit(f"no summaries under {out}")
    text = tables(summaries, args.seeds)
    notes = verdicts(summaries, args.seeds)
    wall = time.perf_counter() - t0
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print()
    print(text)
    print("\n".join(notes))
    result = {
        "command": " ".join(["python", "scripts/lm_policy_seeds.py", *sys.argv[1:]]),
        "seeds": args.seeds, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "results": {label: {metric: dict(zip(("mean", "std"), mean_std(values(summaries, args.seeds, run, stage, metric))),
                                         values=values(summaries, args.seeds, run, stage, metric))
                            for metric, _ in METRICS}
                    for label, run, stage in ROWS},
        "verdicts": notes,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n" + "\n".join(notes) + "\n")
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
