#!/usr/bin/env python
"""A teacher with another tokenizer than the student's: labels-only, ULD and span alignment against the ceiling.

    python scripts/xtok_table.py --parallel               # seeds 1 2 3: the kd-train multiruns, then the table
    python scripts/xtok_table.py --collect outputs/xtok_table            # the table from finished runs only
    python scripts/xtok_table.py --collect outputs/xtok_table --write docs/language-models.md

The protocol: experiment=lm_pydoc's teacher (2,048-token byte-level BPE, ~1.04M parameters, 500 steps),
trained once with its own seed (``teacher_fit.seed=42``, the seed of a plain ``kd-train experiment=lm_pydoc``)
and shared by every job through kd-train's teacher store. The multiruns:

* ``kd-train -m experiment=lm_pydoc_xtok distill=uld,span_align seed=1,2,3``: the student architecture of
  lm_pydoc with its own 2,048-token byte-level Unigram tokenizer; each job's baseline is the labels-only row
  (one per seed, shared by both methods through the baseline store);
* the same with span alignment's weights tuned on seed 1 against training topics held out
  (``student_tokenizer.validation_every=10``; never the held-out topics): ``distill.next_weight=0.5
  distill.span_weight=0.5``;
* ``kd-train -m experiment=lm_pydoc seed=1,2,3``: the same architecture on the teacher's own tokenizer with
  plain token-level KD (forward KL), the ceiling, and its labels-only baseline for reference.

Every row is bits per byte of the held-out topics (tokenizer-independent), mean ± std over the seeds. The
multiruns run one after the other, or side by side with ``--parallel`` (then one per method). The table goes to
``--out/xtok_table.md`` and, with ``--write PAGE``, between the markers ``<!-- xtok-table -->`` and
``<!-- /xtok-table -->`` of PAGE.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["teacher_fit.seed=42", "trainer.enable_progress_bar=false"]
# Span alignment's weights chosen on seed 1 with training topics held out (student_tokenizer.validation_every=10).
TUNED = ["distill.next_weight=0.5", "distill.span_weight=0.5"]
MARK_BEGIN, MARK_END = "<!-- xtok-table -->", "<!-- /xtok-table -->"
# (row label, which multirun, distill name, the role of the summary that gives it)
ROWS = [
    ("labels-only, student tokenizer (Unigram 2,048)", "xtok", None, "baseline"),
    ("ULD (Boizard et al. 2024)", "xtok", "uld", "student"),
    ("span alignment (SpanAlign)", "xtok", "span_align", "student"),
    ("span alignment, weights tuned on validation (next 0.5, span 0.5)", "tuned", "span_align", "student"),
    ("ceiling: teacher's tokenizer (BPE 2,048), token KD", "ceiling", "token_kd", "student"),
    ("reference: teacher's tokenizer, labels-only", "ceiling", None, "baseline"),
    ("teacher (BPE 2,048, ~1.04M parameters)", "ceiling", None, "teacher"),
]


def commands(seeds: List[int], out: Path, extra: List[str], by_method: bool) -> Dict[str, List[str]]:
    """The multiruns: one per method with ``by_method`` (to run side by side; the one labels-only baseline
    per seed is still trained once, under the baseline store's lock), else one for both methods."""
    exe = str(Path(sys.executable).parent / "kd-train")
    seed_list = "seed=" + ",".join(str(s) for s in seeds)
    xtok = {f"xtok_{m}": m for m in ("uld", "span_align")} if by_method else {"xtok": "uld,span_align"}
    runs = {name: [exe, "-m", "experiment=lm_pydoc_xtok", f"distill={methods}", seed_list, *COMMON,
                   f"hydra.sweep.dir={out / name}", *extra] for name, methods in xtok.items()}
    runs["tuned"] = [exe, "-m", "experiment=lm_pydoc_xtok", "distill=span_align", *TUNED, seed_list, *COMMON,
                     f"hydra.sweep.dir={out / 'tuned'}", *extra]
    runs["ceiling"] = [exe, "-m", "experiment=lm_pydoc", seed_list, *COMMON, f"hydra.sweep.dir={out / 'ceiling'}",
                       *extra]
    return runs


def run_all(seeds: List[int], out: Path, parallel: bool, extra: List[str], groups: List[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    started = []
    for name, cmd in commands(seeds, out, extra, parallel).items():
        if name.split("_", 1)[0] not in groups:
            continue
        log = open(out / f"{name}.log", "w")
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        if parallel:
            started.append((name, proc))
        elif proc.wait() != 0:
            raise SystemExit(f"{name} failed; see {out / (name + '.log')}")
    for name, proc in started:
        if proc.wait() != 0:
            raise SystemExit(f"{name} failed; see {out / (name + '.log')}")


def collect(out: Path) -> Dict[str, Dict[int, float]]:
    """Row label -> seed -> bits per byte, from every summary.json under ``out``."""
    values: Dict[str, Dict[int, float]] = {label: {} for label, *_ in ROWS}
    for path in sorted(out.glob("*/*/summary.json")):  # <out>/<multirun>/<job>/summary.json
        group = path.parent.parent.name.split("_", 1)[0]  # xtok, xtok_uld, xtok_span_align -> xtok
        summary = json.loads(path.read_text())
        distill = (summary.get("distill") or {}).get("name")
        for label, where, name, role in ROWS:
            if where != group or (name is not None and name != distill):
                continue
            bpb = (summary.get(role) or {}).get("bpb")
            if bpb is not None:
                values[label][int(summary["seed"])] = float(bpb)
    return values


def mean_std(xs: List[float]) -> tuple:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def table(values: Dict[str, Dict[int, float]]) -> str:
    seeds = sorted({s for v in values.values() for s in v})
    lines = ["| student (same architecture, ~150k parameters at 2,048 tokens) | "
             + " | ".join(f"seed {s}" for s in seeds) + " | bits per byte, mean ± std |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for label, *_ in ROWS:
        row = values.get(label) or {}
        if not row:
            continue
        m, sd = mean_std([row[s] for s in sorted(row)])
        lines.append(f"| {label} | " + " | ".join(f"{row[s]:.4f}" if s in row else "" for s in seeds)
                     + f" | {m:.4f} ± {sd:.4f} |")
    return "\n".join(lines)


def verdict(values: Dict[str, Dict[int, float]]) -> str:
    base = values[ROWS[0][0]]
    lines = []
    for label, _, name, _ in ROWS[1:4]:
        row = values[label]
        seeds = sorted(set(base) & set(row))
        if len(seeds) < 2:
            continue
        b, s = [base[k] for k in seeds], [row[k] for k in seeds]
        gain = statistics.mean(b) - statistics.mean(s)
        spread = statistics.stdev(b) + statistics.stdev(s)
        per_seed = [x - y for x, y in zip(b, s)]
        lines.append(f"{label}: {gain:+.4f} bits per byte against labels-only (per seed {min(per_seed):+.4f} to "
                     f"{max(per_seed):+.4f}); spread of the seeds (std labels-only + std method) {spread:.4f}: "
                     + ("more than the spread" if gain > spread else "not more than the spread"))
    return "\n".join(lines)


def write_page(page: Path, text: str) -> None:
    content = page.read_text()
    if MARK_BEGIN not in content or MARK_END not in content:
        raise SystemExit(f"{page} has no {MARK_BEGIN} ... {MARK_END} markers to write the table between")
    head, rest = content.split(MARK_BEGIN, 1)
    tail = rest.split(MARK_END, 1)[1]
    page.write_text(f"{head}{MARK_BEGIN}\n{text}\n{MARK_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="outputs/xtok_table")
    parser.add_argument("--collect", metavar="DIR", help="only read the finished runs under DIR")
    parser.add_argument("--parallel", action="store_true", help="run the two multiruns side by side")
    parser.add_argument("--groups", nargs="+", default=["xtok", "tuned", "ceiling"], choices=["xtok", "tuned", "ceiling"],
                        help="which multiruns to run (default both)")
    parser.add_argument("--write", metavar="PAGE", help="also write the table into PAGE between the markers")
    parser.add_argument("overrides", nargs="*", help="extra kd-train overrides for every job (after --)")
    args = parser.parse_args()
    out = Path(args.collect or args.out)
    if not args.collect:
        t0 = time.perf_counter()
        run_all(args.seeds, out, args.parallel, args.overrides, args.groups)
        print(f"both multiruns done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    values = collect(out)
    if not any(values.values()):
        raise SystemExit(f"no summaries under {out}")
    text = table(values) + "\n\n" + verdict(values)
    (out / "xtok_table.md").write_text(text + "\n")
    print(text)
    if args.write:
        write_page(Path(args.write), table(values))


if __name__ == "__main__":
    main()
