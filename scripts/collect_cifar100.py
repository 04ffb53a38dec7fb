#!/usr/bin/env python
"""Collect the CIFAR-100 runs of scripts/reproduce_cifar100.sh into a markdown table beside the
published numbers (RepDistiller README; DKD from the mdistiller README).

Every directory under the given roots that holds a ``summary.json`` (written by kd-train) is one run;
its experiment is read from ``.hydra/overrides.yaml`` (``experiment=cifar100_<teacher>_<student>_<method>``)
or, failing that, from the directory name. Repeated runs of one experiment are averaged.

    python scripts/collect_cifar100.py outputs/cifar100 [more roots ...] [--output table.md]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

METHODS = ["kd", "fitnet", "at", "rkd", "crd", "dkd"]
METHOD_TITLES = {"kd": "KD", "fitnet": "FitNet", "at": "AT", "rkd": "RKD", "crd": "CRD", "dkd": "DKD"}
# (teacher, student) -> teacher, student alone, then one entry per METHODS, top-1 in percent.
PUBLISHED: Dict[Tuple[str, str], List[float]] = {
    ("resnet32x4", "resnet8x4"): [79.42, 72.50, 73.33, 73.50, 73.44, 71.90, 75.51, 76.32],
    ("wrn_40_2", "wrn_16_2"): [75.61, 73.26, 74.92, 73.58, 74.08, 73.35, 75.48, 76.23],
    ("resnet56", "resnet20"): [72.34, 69.06, 70.66, 69.21, 70.55, 69.61, 71.16, 71.97],
    ("vgg13", "vgg8"): [74.64, 70.36, 72.98, 71.02, 71.43, 71.48, 73.94, 74.68],
    ("resnet32x4", "ShuffleV2"): [79.42, 71.82, 74.45, 73.54, 72.73, 73.21, 75.65, 77.07],
}
TEACHER_RUN = re.compile(r"cifar100_teacher_(?P<teacher>.+)$")


def parse_experiment(name: str) -> Optional[Tuple[str, str, str]]:
    """``cifar100_wrn_40_2_wrn_16_2_dkd`` -> ``("wrn_40_2", "wrn_16_2", "dkd")`` (names may hold underscores)."""
    for (teacher, student) in PUBLISHED:
        for method in METHODS:
            if name == f"cifar100_{teacher}_{student}_{method}":
                return teacher, student, method
    return None


def experiment_of(run_dir: Path) -> str:
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        for line in overrides.read_text().splitlines():
            m = re.search(r"experiment=([\w\-]+)", line)
            if m:
                return m.group(1)
    return run_dir.name


def percent(acc) -> Optional[float]:
    """Accuracies are stored as fractions; accept percentages too."""
    if acc is None:
        return None
    acc = float(acc)
    return 100.0 * acc if acc <= 1.0 else acc


def collect(roots: List[Path]) -> List[dict]:
    """One record per run: experiment name, accuracies in percent, and the teacher checkpoint used."""
    records = []
    for root in roots:
        for summary in sorted(root.rglob("summary.json")):
            try:
                data = json.loads(summary.read_text())
            except (OSError, ValueError) as err:
                print(f"collect_cifar100: skipping unreadable {summary}: {err}", file=sys.stderr)
                continue
            record = {"experiment": experiment_of(summary.parent), "dir": str(summary.parent)}
            for stage in ("teacher", "baseline", "student"):
                record[stage] = percent((data.get(stage) or {}).get("acc"))
            # Runs that reuse one teacher (cache or teacher.ckpt_path) must count it once.
            record["teacher_key"] = (data.get("teacher") or {}).get("ckpt_path") or record["dir"]
            records.append(record)
    return records


def fmt(values: List[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def cell(values: List[float], published: float) -> str:
    if not values:
        return f"— / {published:.2f}"
    return f"**{fmt(values)}** / {published:.2f} ({statistics.fmean(values) - published:+.2f})"


def markdown(records: List[dict]) -> str:
    """One row per teacher -> student pair; each cell reads ``ours / published (difference)``."""
    header = ["teacher → student", "teacher", "student"] + [METHOD_TITLES[m] for m in METHODS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (teacher, student), pub in PUBLISHED.items():
        teachers: Dict[str, float] = {}
        baselines: List[float] = []
        students: Dict[str, List[float]] = defaultdict(list)
        for r in records:
            parsed = parse_experiment(r["experiment"])
            m = TEACHER_RUN.match(r["experiment"])
            if ((parsed and parsed[0] == teacher) or (m and m.group("teacher") == teacher)) and r["teacher"] is not None:
                teachers[r["teacher_key"]] = r["teacher"]
            if parsed and parsed[:2] == (teacher, student):
                if r["baseline"] is not None:
                    baselines.append(r["baseline"])
                if r["student"] is not None:
                    students[parsed[2]].append(r["student"])
        row = [f"{teacher} → {student}", cell(list(teachers.values()), pub[0]), cell(baselines, pub[1])]
        row += [cell(students[method], pub[2 + i]) for i, method in enumerate(METHODS)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("CIFAR-100 top-1 (%): **ours** / published (ours − published). Published: RepDistiller README "
                 "(teacher, student, KD, FitNet, AT, RKD, CRD), mdistiller README (DKD).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Tabulate CIFAR-100 runs beside the published numbers.")
    p.add_argument("roots", nargs="+", type=Path, help="directories holding the runs (searched recursively)")
    p.add_argument("--output", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.roots if not r.is_dir()]
    if missing:
        p.error(f"not a directory: {', '.join(missing)}")
    records = collect(args.roots)
    if not records:
        print(f"collect_cifar100: no summary.json under {', '.join(map(str, args.roots))}", file=sys.stderr)
    table = markdown(records)
    print(table, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
